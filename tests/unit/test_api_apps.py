"""Apps: creation, validation at the edge (422 naming the rule), conflicts, 404s, scaling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry_app import TestRegistry, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path, domain="paas.test", public_https_port=8443) as registry:
        yield registry


def test_create_list_read_delete(reg: TestRegistry) -> None:
    app = reg.create_app("hello", domains=["hello.example.com"], health_path="/health")
    assert app["urls"] == ["https://hello.paas.test:8443/", "https://hello.example.com:8443/"]
    assert app["active_release"] is None and app["instances"] == 1
    assert [a["name"] for a in reg.client.get("/v1/apps", headers=reg.admin).json()] == ["hello"]
    assert reg.client.get("/v1/apps/hello", headers=reg.admin).json()["health_path"] == "/health"
    assert reg.client.delete("/v1/apps/hello", headers=reg.admin).status_code == 204
    assert reg.client.get("/v1/apps/hello", headers=reg.admin).status_code == 404
    # the domain is free again
    reg.create_app("other", domains=["hello.example.com"])


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"name": "bad;name"}, "name", "invalid app name"),
        ({"name": "Hello"}, "name", "invalid app name"),
        ({"name": "ok", "domains": ["a.com;include"]}, "domains.0", "invalid domain"),
        ({"name": "ok", "domains": ["a.com\nserver evil"]}, "domains.0", "invalid domain"),
        ({"name": "ok", "health_path": "/a b"}, "health_path", "invalid health-check path"),
        ({"name": "ok", "instances": -1}, "instances", "greater than or equal to 0"),
        ({"name": "ok", "colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_hostile_values_are_422_naming_the_rule(
    reg: TestRegistry, body: dict, field: str, rule: str
) -> None:
    response = reg.client.post("/v1/apps", json=body, headers=reg.admin)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert detail.startswith(f"{field}: ") and rule in detail
    assert reg.client.get("/v1/apps", headers=reg.admin).json() == []


def test_bad_name_in_path_is_422_unknown_is_404(reg: TestRegistry) -> None:
    bad = reg.client.get("/v1/apps/bad;name", headers=reg.admin)
    assert bad.status_code == 422 and "invalid app name" in bad.json()["detail"]
    missing = reg.client.get("/v1/apps/nope", headers=reg.admin)
    assert missing.status_code == 404 and missing.json() == {"detail": "app nope does not exist"}
    assert reg.client.patch("/v1/apps/nope", json={}, headers=reg.admin).status_code == 404
    assert reg.client.delete("/v1/apps/nope", headers=reg.admin).status_code == 404


def test_conflicts(reg: TestRegistry) -> None:
    reg.create_app("one", domains=["shop.example.com"])
    again = reg.client.post("/v1/apps", json={"name": "one"}, headers=reg.admin)
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    taken = reg.client.post(
        "/v1/apps", json={"name": "two", "domains": ["shop.example.com"]}, headers=reg.admin
    )
    assert taken.status_code == 409
    assert taken.json()["detail"] == "domain shop.example.com is already used by app one"
    assert reg.client.get("/v1/apps/two", headers=reg.admin).status_code == 404
    reg.create_app("two")
    patch = reg.client.patch(
        "/v1/apps/two", json={"domains": ["shop.example.com"]}, headers=reg.admin
    )
    assert patch.status_code == 409
    assert reg.client.get("/v1/apps/two", headers=reg.admin).json()["domains"] == []


def test_patch_replaces_domains_and_settings(reg: TestRegistry) -> None:
    reg.create_app("one", domains=["a.example.com", "b.example.com"])
    response = reg.client.patch(
        "/v1/apps/one",
        json={"domains": ["b.example.com", "c.example.com"], "health_path": "/up"},
        headers=reg.admin,
    )
    assert response.status_code == 200, response.text
    assert response.json()["domains"] == ["b.example.com", "c.example.com"]
    assert response.json()["health_path"] == "/up"
    reg.create_app("two", domains=["a.example.com"])  # released by the patch
    bad = reg.client.patch("/v1/apps/one", json={"domains": ["x;y"]}, headers=reg.admin)
    assert bad.status_code == 422 and "invalid domain" in bad.json()["detail"]


def test_join_validates_host_fields(reg: TestRegistry) -> None:
    for body, rule in [
        (
            {"name": "h;1", "role": "machine", "address": "127.0.0.1", "proxy_port": 80},
            "invalid host name",
        ),
        (
            {"name": "h1", "role": "machine", "address": "1.2.3.4;", "proxy_port": 80},
            "invalid address",
        ),
        (
            {"name": "h1", "role": "machine", "address": "127.0.0.1", "proxy_port": 70000},
            "less than or equal to 65535",
        ),
        ({"name": "h1", "role": "boss", "address": "127.0.0.1", "proxy_port": 80}, "role"),
        (
            {
                "name": "h1",
                "role": "machine",
                "address": "127.0.0.1",
                "proxy_port": 80,
                "labels": {"zone": "a b"},
            },
            "invalid label",
        ),
    ]:
        response = reg.client.post("/v1/hosts/join", json=body, headers=reg.headers(reg.join_token))
        assert response.status_code == 422, body
        assert rule in response.json()["detail"]
    assert reg.client.get("/v1/hosts", headers=reg.admin).json() == []


def test_report_validates_ports_and_states(reg: TestRegistry) -> None:
    token = reg.join("m1")
    for item in [
        {"id": 1, "state": "running", "port": 0},
        {"id": 1, "state": "running", "port": 65536},
        {"id": 1, "state": "dancing"},
    ]:
        response = reg.client.post(
            "/v1/hosts/m1/report", json={"instances": [item]}, headers=reg.headers(token)
        )
        assert response.status_code == 422


def test_openapi_is_served(reg: TestRegistry) -> None:
    schema = reg.client.get("/openapi.json").json()
    assert "/v1/apps/{app}/releases" in schema["paths"]
    assert reg.client.get("/docs").status_code == 200


def test_config_vars_validate_keys_and_start_a_release(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("hello")
    for body, rule in [
        ({"set": {"bad-key": "x"}}, "invalid config key"),
        ({"set": {"1A": "x"}}, "invalid config key"),
        ({"set": {"A": "x\u0000y"}}, "NUL byte"),
        ({"unset": ["a;b"]}, "invalid config key"),
        ({"set": {"A": "1"}, "unset": ["A"]}, "both set and unset"),
    ]:
        response = reg.client.patch("/v1/apps/hello/config", json=body, headers=reg.admin)
        assert response.status_code == 422, body
        assert rule in response.json()["detail"]
    assert reg.client.get("/v1/apps/hello/config", headers=reg.admin).json()["vars"] == {}

    first = reg.client.patch(
        "/v1/apps/hello/config",
        json={"set": {"GREETING": "hi", "API_KEY": "s3cret"}, "secret": ["API_KEY"]},
        headers=reg.admin,
    ).json()
    assert first == {
        "vars": {"API_KEY": "********", "GREETING": "hi"},
        "secret": ["API_KEY"],
        "release": None,
    }
    release = reg.deploy("hello")
    assert release["config"] == {"API_KEY": "********", "GREETING": "hi"}
    [instance] = reg.desired("m1", token)["instances"]
    assert instance["env"]["API_KEY"] == "s3cret" and instance["env"]["GREETING"] == "hi"
    reg.report("m1", token, instances=[{"id": instance["id"], "state": "running", "port": 5001}])

    changed = reg.client.patch(
        "/v1/apps/hello/config", json={"unset": ["GREETING"]}, headers=reg.admin
    ).json()
    assert changed["release"] == 2 and changed["vars"] == {"API_KEY": "********"}
    v2 = reg.release("hello", 2)
    assert v2["artifact_sha256"] == release["artifact_sha256"] and v2["status"] == "deploying"
    new = [i for i in reg.desired("m1", token)["instances"] if i["release"] == 2]
    assert "GREETING" not in new[0]["env"]
