"""Every route needs the right kind of token: 401 without one, 403 with the wrong kind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry_app import TestRegistry, make_artifact, sha256_of, test_registry

SHA = "a" * 64

MUTATING = [
    ("post", "/v1/apps", {"json": {"name": "x"}}),
    ("patch", "/v1/apps/x", {"json": {"instances": 2}}),
    ("delete", "/v1/apps/x", {}),
    ("put", f"/v1/artifacts/{SHA}", {"content": b"x"}),
    ("post", "/v1/apps/x/releases", {"json": {"artifact_sha256": SHA}}),
    (
        "post",
        "/v1/hosts/join",
        {"json": {"name": "h", "role": "machine", "address": "127.0.0.1", "proxy_port": 80}},
    ),
    ("post", "/v1/hosts/h/report", {"json": {}}),
]
ADMIN_READS = [
    "/v1/apps",
    "/v1/apps/x",
    "/v1/apps/x/releases",
    "/v1/apps/x/releases/1",
    "/v1/apps/x/instances",
    "/v1/hosts",
]


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path) as registry:
        yield registry


def test_health_needs_no_token(reg: TestRegistry) -> None:
    assert reg.client.get("/v1/health").json() == {"ok": True}


@pytest.mark.parametrize(("method", "path", "kwargs"), MUTATING)
def test_mutating_routes_need_a_token(
    reg: TestRegistry, method: str, path: str, kwargs: dict
) -> None:
    response = getattr(reg.client, method)(path, **kwargs)
    assert response.status_code == 401
    assert "bearer token" in response.json()["detail"]
    bad = getattr(reg.client, method)(path, headers=reg.headers("nope"), **kwargs)
    assert bad.status_code == 401


@pytest.mark.parametrize(("method", "path", "kwargs"), MUTATING)
def test_host_and_join_tokens_are_refused_on_admin_routes(
    reg: TestRegistry, method: str, path: str, kwargs: dict
) -> None:
    host_token = reg.join("other")
    if path == "/v1/hosts/join":
        response = reg.client.post(path, headers=reg.headers(host_token), **kwargs)
        assert response.status_code == 403
        return
    for token in (host_token, reg.join_token):
        response = getattr(reg.client, method)(path, headers=reg.headers(token), **kwargs)
        assert response.status_code == 403, (token, response.text)


@pytest.mark.parametrize("path", ADMIN_READS)
def test_admin_reads_refuse_other_tokens(reg: TestRegistry, path: str) -> None:
    host_token = reg.join("h1")
    assert reg.client.get(path).status_code == 401
    assert reg.client.get(path, headers=reg.headers(host_token)).status_code == 403
    assert reg.client.get(path, headers=reg.headers(reg.join_token)).status_code == 403


def test_host_token_cannot_create_apps(reg: TestRegistry) -> None:
    token = reg.join("h1")
    response = reg.client.post("/v1/apps", json={"name": "x"}, headers=reg.headers(token))
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]


def test_host_reads_only_its_own_desired_state_and_reports(reg: TestRegistry) -> None:
    t1, t2 = reg.join("h1"), reg.join("h2")
    assert reg.client.get("/v1/hosts/h1/desired", headers=reg.headers(t1)).status_code == 200
    assert reg.client.get("/v1/hosts/h2/desired", headers=reg.headers(t1)).status_code == 403
    assert reg.client.get("/v1/hosts/h1/desired", headers=reg.admin).status_code == 200
    assert (
        reg.client.get("/v1/hosts/h1/desired", headers=reg.headers(reg.join_token)).status_code
        == 403
    )
    report = reg.client.post("/v1/hosts/h1/report", json={}, headers=reg.headers(t2))
    assert report.status_code == 403
    assert reg.client.post("/v1/hosts/h1/report", json={}, headers=reg.admin).status_code == 403
    assert (
        reg.client.post("/v1/hosts/h2/report", json={}, headers=reg.headers(t2)).status_code == 204
    )


def test_routing_is_for_frontends_and_admin(reg: TestRegistry) -> None:
    machine, frontend = reg.join("m1"), reg.join("f1", role="frontend")
    assert reg.client.get("/v1/routing", headers=reg.headers(machine)).status_code == 403
    assert reg.client.get("/v1/routing", headers=reg.headers(frontend)).status_code == 200
    assert reg.client.get("/v1/routing", headers=reg.admin).status_code == 200
    assert reg.client.get("/v1/routing", headers=reg.headers(reg.join_token)).status_code == 403


def test_hosts_may_fetch_artifacts_but_not_upload(reg: TestRegistry) -> None:
    data = make_artifact({"Procfile": "web: x\n"})
    sha = reg.upload(data)
    token = reg.join("m1")
    assert reg.client.head(f"/v1/artifacts/{sha}", headers=reg.headers(token)).status_code == 200
    got = reg.client.get(f"/v1/artifacts/{sha}", headers=reg.headers(token))
    assert got.status_code == 200 and got.content == data
    put = reg.client.put(
        f"/v1/artifacts/{sha256_of(b'y')}", content=b"y", headers=reg.headers(token)
    )
    assert put.status_code == 403
    assert reg.client.get(f"/v1/artifacts/{sha}").status_code == 401


def test_rejoin_issues_new_token_and_revokes_old(reg: TestRegistry) -> None:
    """Only an admin may re-join a host that already joined
    (tests/integration/test_host_identity.py)."""
    old = reg.join("m1", address="127.0.0.2", port=9000)
    body = {"name": "m1", "role": "machine", "address": "127.0.0.3", "proxy_port": 9001}
    response = reg.client.post("/v1/hosts/join", json=body, headers=reg.admin)
    assert response.status_code == 200, response.text
    new = response.json()["token"]
    assert old != new
    assert reg.client.get("/v1/hosts/m1/desired", headers=reg.headers(old)).status_code == 401
    assert reg.client.get("/v1/hosts/m1/desired", headers=reg.headers(new)).status_code == 200
    hosts = reg.client.get("/v1/hosts", headers=reg.admin).json()
    assert [(h["name"], h["address"], h["proxy_port"]) for h in hosts] == [
        ("m1", "127.0.0.3", 9001)
    ]
