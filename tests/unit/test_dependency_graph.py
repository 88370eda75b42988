"""Dependencies between apps: pure graph checks, the manifest key, and the registry API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.manifest import ManifestError, parse_manifest
from controller.core.services import DependencyError, check_dependencies, env_key, find_cycle
from tests.support.registry_app import TestRegistry, make_artifact, test_registry


def test_env_key_upper_cases_and_replaces_dashes() -> None:
    assert env_key("users") == "USERS_URL"
    assert env_key("user-db2") == "USER_DB2_URL"


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({}, None),
        ({"a": ["b"], "b": ["c"], "c": []}, None),
        ({"a": ["b", "c"], "b": ["c"], "c": []}, None),  # a diamond is not a cycle
        ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
        ({"a": ["b"], "b": ["c"], "c": ["b"]}, ["b", "c", "b"]),
        ({"x": [], "a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]),
    ],
)
def test_find_cycle(graph: dict[str, list[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_check_dependencies_messages() -> None:
    graph = {"users": [], "web": ["users"], "api": ["web"]}
    check_dependencies(graph, "admin", ["web", "users"])  # new app, no cycle
    with pytest.raises(DependencyError, match="depends on mail, which does not exist"):
        check_dependencies(graph, "web", ["users", "mail"])
    with pytest.raises(DependencyError, match="depends on a, b, which do not exist"):
        check_dependencies(graph, "web", ["a", "b"])
    with pytest.raises(DependencyError, match=r"^dependency cycle: users -> api -> web -> users$"):
        check_dependencies(graph, "users", ["api"])
    with pytest.raises(DependencyError, match="cannot depend on itself"):
        check_dependencies(graph, "web", ["web"])


def test_manifest_depends_on() -> None:
    assert parse_manifest("").depends_on is None  # not declared: keep the app's list
    assert parse_manifest("depends_on = []").depends_on == []
    assert parse_manifest('[app]\ndepends_on = ["users", "db", "users"]').depends_on == [
        "users",
        "db",
    ]
    with pytest.raises(ManifestError, match="must be a list of app names"):
        parse_manifest('depends_on = "users"')
    with pytest.raises(ManifestError, match="invalid app name"):
        parse_manifest('depends_on = ["Users;"]')
    with pytest.raises(ManifestError, match="cannot depend on itself"):
        parse_manifest('name = "web"\ndepends_on = ["web"]')


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(
        tmp_path, domain="paas.test", service_port_min=21000, service_port_max=21002
    ) as registry:
        yield registry


def _deploy(reg: TestRegistry, app: str, depends_on: list[str] | None = None) -> int:
    toml = f"depends_on = {depends_on!r}\n".replace("'", '"') if depends_on is not None else ""
    sha = reg.upload(make_artifact({"Procfile": "web: python app.py\n", "paas.toml": toml}))
    response = reg.client.post(
        f"/v1/apps/{app}/releases", json={"artifact_sha256": sha}, headers=reg.admin
    )
    return response.status_code


def test_registry_assigns_ports_wires_urls_and_guards_the_graph(reg: TestRegistry) -> None:
    token = reg.join("m1", port=8081)
    users = reg.create_app("users")
    web = reg.create_app("web")
    assert (users["service_port"], web["service_port"]) == (21000, 21001)

    assert _deploy(reg, "web", ["mail"]) == 422
    assert _deploy(reg, "users") == 201
    assert _deploy(reg, "web", ["users"]) == 201
    app = reg.client.get("/v1/apps/web", headers=reg.admin).json()
    assert app["depends_on"] == ["users"]

    desired = reg.desired("m1", token)
    envs = {i["app"]: i["env"] for i in desired["instances"]}
    assert envs["web"]["USERS_URL"] == "http://127.0.0.1:21000"
    assert "USERS_URL" not in envs["users"]
    assert envs["web"]["PAAS_APP"] == "web" and envs["web"]["PAAS_HOST"] == "m1"

    # A cycle is refused with its path, and nothing changes.
    reg.create_app("api")
    assert _deploy(reg, "api", ["web"]) == 201
    assert _deploy(reg, "users", ["api"]) == 422
    assert reg.client.get("/v1/apps/users", headers=reg.admin).json()["depends_on"] == []

    # The range is exhausted: a fourth app cannot get a service port.
    response = reg.client.post("/v1/apps", json={"name": "more"}, headers=reg.admin)
    assert response.status_code == 409 and "no free service port" in response.text

    # Delete protection.
    response = reg.client.delete("/v1/apps/users", headers=reg.admin)
    assert response.status_code == 409 and "dependency of web" in response.text
    assert reg.client.delete("/v1/apps/api", headers=reg.admin).status_code == 204
    assert reg.client.delete("/v1/apps/users?force=true", headers=reg.admin).status_code == 204


def test_cycle_message_from_the_api(reg: TestRegistry) -> None:
    reg.create_app("a")
    reg.create_app("b")
    assert _deploy(reg, "a") == 201
    assert _deploy(reg, "b", ["a"]) == 201
    sha = reg.upload(make_artifact({"Procfile": "web: x\n", "paas.toml": 'depends_on = ["b"]\n'}))
    response = reg.client.post(
        "/v1/apps/a/releases", json={"artifact_sha256": sha}, headers=reg.admin
    )
    assert response.status_code == 422
    assert "dependency cycle: a -> b -> a" in response.json()["detail"]
