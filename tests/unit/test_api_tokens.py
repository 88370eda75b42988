"""Token scopes: admin, deploy (one app), host; created, listed and revoked through the API."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry_app import TestRegistry, make_artifact, test_registry

FILL = {"app": "other", "version": "1", "domain": "x.example.com", "sha256": "a" * 64}


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    with test_registry(tmp_path_factory.mktemp("tokens")) as registry:
        registry.create_app("mine")
        registry.create_app("other")
        yield registry


@pytest.fixture(scope="module")
def deploy_token(reg: TestRegistry) -> str:
    response = reg.client.post(
        "/v1/tokens",
        # the custom domains it may claim (none by default): tests/integration/test_domain_claims.py
        json={"scope": "deploy", "app": "mine", "name": "ci-mine", "domains": ["mine.example.com"]},
        headers=reg.admin,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["scope"] == "deploy" and body["app"] == "mine" and body["name"] == "ci-mine"
    assert body["domains"] == ["mine.example.com"]
    return body["token"]


def app_routes(reg: TestRegistry) -> list[tuple[str, str]]:
    """Every (method, path) under /v1/apps/{app}: new routes are covered automatically."""
    found = []
    paths = reg.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    for path, operations in paths.items():
        if path.startswith("/v1/apps/{app}"):
            found += [(method.upper(), path) for method in sorted(operations) if method != "head"]
    return found


def fill(path: str, app: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: app if m.group(1) == "app" else FILL[m.group(1)], path)


def test_every_app_route_refuses_a_deploy_token_of_another_app(
    reg: TestRegistry, deploy_token: str
) -> None:
    routes = app_routes(reg)
    families = {path.split("/")[4] if path.count("/") > 3 else "app" for _, path in routes}
    for family in ("app", "releases", "rollback", "instances", "config", "logs", "run"):
        assert family in families, families
    for method, path in routes:
        response = reg.client.request(
            method, fill(path, "other"), json={}, headers=reg.headers(deploy_token)
        )
        assert response.status_code == 403, (method, path, response.text)
        assert "may not touch app 'other'" in response.json()["detail"]


OWN_APP_CALLS = [
    ("GET", "/v1/apps/mine", None),
    ("PATCH", "/v1/apps/mine", {"instances": 0}),
    ("GET", "/v1/apps/mine/releases", None),
    ("GET", "/v1/apps/mine/instances", None),
    ("GET", "/v1/apps/mine/config", None),
    ("PATCH", "/v1/apps/mine/config", {"set": {"GREETING": "hi"}}),
    ("GET", "/v1/apps/mine/routing", None),
    ("PATCH", "/v1/apps/mine/routing", {"max_body_mb": 5}),
    ("GET", "/v1/apps/mine/certs", None),
    ("POST", "/v1/apps/mine/domains", {"domain": "mine.example.com"}),
]


@pytest.mark.parametrize(("method", "path", "body"), OWN_APP_CALLS)
def test_a_deploy_token_works_on_its_own_app(
    reg: TestRegistry, deploy_token: str, method: str, path: str, body: dict | None
) -> None:
    response = reg.client.request(method, path, json=body, headers=reg.headers(deploy_token))
    assert response.status_code in (200, 201), (method, path, response.text)


def test_a_deploy_token_deploys_and_rolls_back_its_app(
    reg: TestRegistry, deploy_token: str
) -> None:
    data = make_artifact({"Procfile": "web: python app.py\n"})
    from tests.support.registry_app import sha256_of

    sha = sha256_of(data)
    put = reg.client.put(f"/v1/artifacts/{sha}", content=data, headers=reg.headers(deploy_token))
    assert put.status_code == 200, put.text
    assert (
        reg.client.head(f"/v1/artifacts/{sha}", headers=reg.headers(deploy_token)).status_code
        == 200
    )
    made = reg.client.post(
        "/v1/apps/mine/releases", json={"artifact_sha256": sha}, headers=reg.headers(deploy_token)
    )
    assert made.status_code == 201, made.text
    other = reg.client.post(
        "/v1/apps/other/releases", json={"artifact_sha256": sha}, headers=reg.headers(deploy_token)
    )
    assert other.status_code == 403
    rollback = reg.client.post("/v1/apps/mine/rollback", json={}, headers=reg.headers(deploy_token))
    assert rollback.status_code in (201, 409), rollback.text  # 409: nothing to roll back to


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/apps"),
        ("POST", "/v1/apps"),
        ("DELETE", "/v1/apps/mine"),
        ("GET", "/v1/hosts"),
        ("GET", "/v1/tokens"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/routing"),
    ],
)
def test_a_deploy_token_may_not_do_admin_things(
    reg: TestRegistry, deploy_token: str, method: str, path: str
) -> None:
    body = {"name": "new"} if method == "POST" else None
    response = reg.client.request(method, path, json=body, headers=reg.headers(deploy_token))
    assert response.status_code == 403, (method, path, response.text)


def test_tokens_are_listed_without_secrets_and_revoked(reg: TestRegistry) -> None:
    made = reg.client.post("/v1/tokens", json={"scope": "admin", "name": "ops"}, headers=reg.admin)
    assert made.status_code == 201
    token, token_id = made.json()["token"], made.json()["id"]
    listed = reg.client.get("/v1/tokens", headers=reg.admin)
    assert listed.status_code == 200
    assert token not in listed.text and "sha256" not in listed.text
    row = next(t for t in listed.json() if t["id"] == token_id)
    assert row["scope"] == "admin" and row["name"] == "ops"
    assert {"admin", "join"} <= {t["scope"] for t in listed.json()}
    assert reg.client.get("/v1/apps", headers=reg.headers(token)).status_code == 200
    assert reg.client.delete(f"/v1/tokens/{token_id}", headers=reg.admin).status_code == 204
    assert reg.client.get("/v1/apps", headers=reg.headers(token)).status_code == 401
    assert reg.client.delete(f"/v1/tokens/{token_id}", headers=reg.admin).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"scope": "deploy"},  # no app
        {"scope": "admin", "app": "mine"},
        {"scope": "host"},
        {"scope": "deploy", "app": "Bad_Name"},
        {"scope": "admin", "name": "spaces are bad"},
        {"scope": "admin", "name": "x" * 64},
    ],
)
def test_bad_token_requests_are_refused(reg: TestRegistry, body: dict) -> None:
    response = reg.client.post("/v1/tokens", json=body, headers=reg.admin)
    assert response.status_code == 422, response.text


def test_deploy_token_for_unknown_app_is_404(reg: TestRegistry) -> None:
    response = reg.client.post(
        "/v1/tokens", json={"scope": "deploy", "app": "nope"}, headers=reg.admin
    )
    assert response.status_code == 404


def test_the_last_admin_token_cannot_be_revoked(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        tokens = reg.client.get("/v1/tokens", headers=reg.admin).json()
        admin = next(t for t in tokens if t["scope"] == "admin")
        response = reg.client.delete(f"/v1/tokens/{admin['id']}", headers=reg.admin)
        assert response.status_code == 409
        assert "last admin token" in response.json()["detail"]


def test_a_deploy_token_cannot_download_an_artifact(reg: TestRegistry, deploy_token: str) -> None:
    """Another tenant's code, by its sha256 (seen in a log, or its own): hosts and the admin
    download artifacts, a deploy token only learns whether one is stored."""
    from tests.support.registry_app import sha256_of

    data = make_artifact({"Procfile": "web: python secret_code.py\n"})
    sha = sha256_of(data)
    assert (
        reg.client.put(f"/v1/artifacts/{sha}", content=data, headers=reg.admin).status_code == 200
    )
    got = reg.client.get(f"/v1/artifacts/{sha}", headers=reg.headers(deploy_token))
    assert got.status_code == 403 and b"secret_code" not in got.content
    assert "may not download" in got.json()["detail"]
    assert (
        reg.client.head(f"/v1/artifacts/{sha}", headers=reg.headers(deploy_token)).status_code
        == 200
    )
    assert reg.client.get(f"/v1/artifacts/{sha}", headers=reg.admin).content == data
