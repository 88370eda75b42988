"""POST /v1/apps/{app}/rollback: a new release with an earlier release's code and config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry_app import TestRegistry, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path, domain="paas.test") as registry:
        yield registry


def activate(reg: TestRegistry, token: str, release: dict) -> dict:
    """Play the machine agent: every instance of `release` running and routed."""
    ids = [i["id"] for i in release["instances"]]
    instances = [{"id": i, "state": "running", "port": 5000 + i, "routed": True} for i in ids]
    reg.report("m1", token, instances=instances)
    got = reg.release(release["app"], release["version"])
    assert got["status"] == "active", got
    return got


def set_config(reg: TestRegistry, body: dict) -> int:
    response = reg.client.patch("/v1/apps/shop/config", json=body, headers=reg.admin)
    assert response.status_code == 200, response.text
    return response.json()["release"]


def rollback(reg: TestRegistry, body: dict | None = None) -> dict:
    response = reg.client.post("/v1/apps/shop/rollback", json=body, headers=reg.admin)
    assert response.status_code == 201, response.text
    return response.json()


def code(marker: str) -> dict[str, str]:
    """min_healthy_s = 0: a release switches in on its first healthy report (the health
    window and automatic rollbacks are tested in tests/unit/test_release_health.py)."""
    return {
        "Procfile": "web: python app.py\n",
        "app.py": f"# {marker}\n",
        "paas.toml": '[app]\nhealth_path = "/up"\nhealth_timeout = 7\nmin_healthy_s = 0\n',
    }


def test_rollback_restores_code_and_config_as_a_new_release(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("shop")
    v1 = activate(reg, token, reg.deploy("shop", code("one")))
    v2 = activate(reg, token, reg.release("shop", set_config(reg, {"set": {"GREETING": "hi"}})))
    assert v2["description"] == "config: set GREETING" and v2["config"] == {"GREETING": "hi"}
    set_config(reg, {"set": {"TOKEN": "s3cret"}, "secret": ["TOKEN"], "unset": ["GREETING"]})
    v3 = activate(reg, token, reg.release("shop", 3))
    v4 = activate(reg, token, reg.deploy("shop", code("two")))
    assert v4["artifact_sha256"] != v1["artifact_sha256"]

    v5 = rollback(reg)  # default: the release before the active one
    assert v5["version"] == 5 and v5["description"] == "rollback to v3"
    assert v5["status"] == "deploying"
    assert v5["artifact_sha256"] == v3["artifact_sha256"] == v1["artifact_sha256"]
    assert v5["config"] == {"TOKEN": "********"}
    assert (v5["health_path"], v5["health_timeout_s"]) == ("/up", 7)
    # The app's config vars are the rolled-back snapshot: the next change starts from it.
    config = reg.client.get("/v1/apps/shop/config", headers=reg.admin).json()
    assert config["vars"] == {"TOKEN": "********"} and config["secret"] == ["TOKEN"]
    # Health-gated like any deploy: v4 serves until v5 runs, then v5 takes over.
    desired = reg.desired("m1", token)["instances"]
    by_release = {d["release"]: d for d in desired}
    assert by_release[4]["serve"] is True and by_release[5]["serve"] is False
    assert by_release[5]["env"]["TOKEN"] == "s3cret" and by_release[5]["health_timeout_s"] == 7
    assert reg.release("shop", 4)["status"] == "active"
    activate(reg, token, v5)
    assert reg.release("shop", 4)["status"] == "superseded"

    v6 = rollback(reg, {"version": 2})
    assert v6["description"] == "rollback to v2" and v6["config"] == {"GREETING": "hi"}
    listed = reg.client.get("/v1/apps/shop/releases", headers=reg.admin).json()
    assert [(r["version"], r["status"]) for r in listed] == [
        (6, "deploying"),
        (5, "active"),
        (4, "superseded"),
        (3, "superseded"),
        (2, "superseded"),
        (1, "superseded"),
    ]


def test_default_target_skips_failed_releases(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("shop")
    activate(reg, token, reg.deploy("shop", code("one")))
    broken = reg.deploy("shop", code("broken"))
    reg.report("m1", token, instances=[{"id": broken["instances"][0]["id"], "state": "failed"}])
    assert reg.release("shop", 2)["status"] == "failed"
    activate(reg, token, reg.deploy("shop", code("three")))
    assert rollback(reg)["description"] == "rollback to v1"


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (None, 409, "no release of shop before v1 ever served"),
        ({"version": 1}, 409, "release v1 of shop is already the active release"),
        ({"version": 9}, 404, "app shop has no release 9"),
        ({"version": 0}, 422, "version: Input should be greater than or equal to 1"),
        ({"version": 1, "force": True}, 422, "force: Extra inputs are not permitted"),
    ],
)
def test_refusals_change_nothing(
    reg: TestRegistry, body: dict | None, status: int, detail: str
) -> None:
    token = reg.join("m1")
    reg.create_app("shop")
    activate(reg, token, reg.deploy("shop", code("one")))
    response = reg.client.post("/v1/apps/shop/rollback", json=body, headers=reg.admin)
    assert response.status_code == status and response.json()["detail"] == detail
    assert len(reg.client.get("/v1/apps/shop/releases", headers=reg.admin).json()) == 1


def test_nothing_active_and_unknown_app(reg: TestRegistry) -> None:
    reg.create_app("shop")
    response = reg.client.post("/v1/apps/shop/rollback", headers=reg.admin)
    assert response.status_code == 409 and "no active release" in response.json()["detail"]
    response = reg.client.post("/v1/apps/nope/rollback", headers=reg.admin)
    assert response.status_code == 404
    host = reg.join("m1")
    response = reg.client.post("/v1/apps/shop/rollback", headers=reg.headers(host))
    assert response.status_code == 403
