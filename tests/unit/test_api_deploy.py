"""The deploy state machine driven by fake agent reports over the real API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from tests.support.registry_app import TestRegistry, make_artifact, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path, domain="paas.test") as registry:
        yield registry


def ids(desired: dict) -> list[int]:
    return [i["id"] for i in desired["instances"]]


def run(reg: TestRegistry, host: str, token: str, instance_ids: list[int], **extra) -> None:
    reg.report(
        host,
        token,
        instances=[{"id": i, "state": "running", "port": 5000 + i, **extra} for i in instance_ids],
    )


def deploy_active(reg: TestRegistry, host: str, token: str, app: str) -> dict:
    release = reg.deploy(app)
    mine = [i["id"] for i in release["instances"]]
    run(reg, host, token, mine)
    run(reg, host, token, mine, routed=True)
    return reg.release(app, release["version"])


def test_release_from_real_tarball_reads_procfile_and_manifest(reg: TestRegistry) -> None:
    t1, t2 = reg.join("m1"), reg.join("m2")
    reg.create_app("shop")
    release = reg.deploy(
        "shop",
        {
            "Procfile": "# the shop\nweb: python -m shop --port $PORT\nworker: python w.py\n",
            "paas.toml": '[app]\nhealth_path = "/health"\ninstances = 2\n'
            'domains = ["shop.example.com"]\n',
            "shop/__init__.py": "",
        },
    )
    assert release["version"] == 1 and release["status"] == "deploying"
    assert release["stage"] == "uploaded"
    assert release["processes"] == {"web": "python -m shop --port $PORT", "worker": "python w.py"}
    assert release["health_path"] == "/health"
    web = [i for i in release["instances"] if i["process"] == "web"]
    assert sorted(i["host"] for i in web) == ["m1", "m2"]
    assert [i["process"] for i in release["instances"]].count("worker") == 1  # runs too
    app = reg.client.get("/v1/apps/shop", headers=reg.admin).json()
    assert app["instances"] == 2 and app["domains"] == ["shop.example.com"]
    desired = reg.desired("m1", t1)
    [instance] = [i for i in desired["instances"] if i["process"] == "web"]
    assert instance["command"] == "python -m shop --port $PORT"
    assert instance["serve"] is False and instance["health_path"] == "/health"
    assert instance["domains"] == ["shop.paas.test", "shop.example.com"]
    assert instance["env"].pop("PAAS_APP_ID")[0].isdigit()  # keys its data folder on hosts
    assert instance["env"] == {
        "PAAS_APP": "shop",
        "PAAS_RELEASE": "1",
        "PAAS_HOST": "m1",
        "PAAS_URL": "https://shop.paas.test/",
    }
    assert [i["process"] for i in reg.desired("m2", t2)["instances"]].count("web") == 1


@pytest.mark.parametrize(
    ("files", "status", "message"),
    [
        ({"Procfile": "worker: x\n"}, 422, "Procfile has no web process"),
        ({"app.py": ""}, 422, "no Procfile"),
        ({"Procfile": "web: x\n", "paas.toml": "colour = 1\n"}, 422, "unknown key colour"),
        ({"Procfile": "web x\n"}, 422, "Procfile line 1"),
        (
            {"Procfile": "web: x\n", "paas.toml": "[app]\nhealth_timeout = 0\n"},
            422,
            "health_timeout must be between 1 and 3600 seconds",
        ),
        (
            {"Procfile": "web: x\n", "paas.toml": '[app]\nhealth_timeout = "10s"\n'},
            422,
            "health_timeout must be a number of seconds",
        ),
    ],
)
def test_bad_artifacts_create_nothing(
    reg: TestRegistry, files: dict, status: int, message: str
) -> None:
    reg.join("m1")
    reg.create_app("shop")
    sha = reg.upload(make_artifact(files))
    response = reg.client.post(
        "/v1/apps/shop/releases", json={"artifact_sha256": sha}, headers=reg.admin
    )
    assert response.status_code == status and message in response.json()["detail"]
    assert reg.client.get("/v1/apps/shop/releases", headers=reg.admin).json() == []


def test_not_a_tarball_and_unknown_artifact(reg: TestRegistry) -> None:
    reg.create_app("shop")
    sha = reg.upload(b"not a tarball")
    response = reg.client.post(
        "/v1/apps/shop/releases", json={"artifact_sha256": sha}, headers=reg.admin
    )
    assert response.status_code == 422 and "not a valid .tar.gz" in response.json()["detail"]
    missing = reg.client.post(
        "/v1/apps/shop/releases", json={"artifact_sha256": "0" * 64}, headers=reg.admin
    )
    assert missing.status_code == 404
    unknown_app = reg.client.post(
        "/v1/apps/nope/releases", json={"artifact_sha256": sha}, headers=reg.admin
    )
    assert unknown_app.status_code == 404


def test_deploying_to_active_to_routed(reg: TestRegistry) -> None:
    token, front = reg.join("m1", address="127.0.0.2", port=9001), reg.join("f1", role="frontend")
    reg.create_app("hello")
    release = reg.deploy("hello")
    [iid] = [i["id"] for i in release["instances"]]
    desired_before = reg.desired("m1", token)["index"]

    reg.report("m1", token, instances=[{"id": iid, "state": "installing"}])
    assert reg.release("hello", 1)["stage"] == "installing"
    reg.report("m1", token, instances=[{"id": iid, "state": "starting", "port": 5001}])
    assert reg.release("hello", 1)["stage"] == "starting"
    assert reg.desired("m1", token)["index"] == desired_before  # reports never wake agents

    reg.report("m1", token, instances=[{"id": iid, "state": "running", "port": 5001}])
    got = reg.release("hello", 1)
    assert (got["status"], got["stage"]) == ("active", "healthy")
    desired = reg.desired("m1", token)
    assert desired["index"] > desired_before and desired["instances"][0]["serve"] is True
    assert reg.client.get("/v1/apps/hello", headers=reg.admin).json()["active_release"] == 1
    routing = reg.client.get("/v1/routing", headers=reg.headers(front)).json()
    [route] = routing["apps"]
    assert (route["name"], route["domains"], route["servers"]) == (
        "hello",
        ["hello.paas.test"],
        [],
    )
    # A frontend that applied the table from before the host routed it is not enough.
    reg.report("f1", front, applied_index=routing["index"])
    assert reg.release("hello", 1)["stage"] == "healthy"

    reg.report(
        "m1", token, instances=[{"id": iid, "state": "running", "port": 5001, "routed": True}]
    )
    routing = reg.client.get("/v1/routing", headers=reg.headers(front)).json()
    assert routing["index"] > desired["index"]  # a routing change wakes the frontends
    assert routing["apps"][0]["servers"] == [{"host": "m1", "address": "127.0.0.2", "port": 9001}]
    assert reg.release("hello", 1)["stage"] == "healthy"  # the frontend has not applied it
    reg.report("f1", front, applied_index=routing["index"])
    assert reg.release("hello", 1)["stage"] == "routed"


def test_failure_keeps_previous_release_serving(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("hello")
    v1 = deploy_active(reg, "m1", token, "hello")
    assert v1["stage"] == "routed"
    v2 = reg.deploy("hello")
    [new] = [i["id"] for i in v2["instances"]]
    [old] = [i["id"] for i in v1["instances"]]
    assert sorted(ids(reg.desired("m1", token))) == [old, new]
    reg.report(
        "m1",
        token,
        instances=[
            {"id": old, "state": "running", "port": 5001, "routed": True},
            {"id": new, "state": "failed", "error": "ModuleNotFoundError: No module named 'x'"},
        ],
    )
    failed = reg.release("hello", 2)
    assert failed["status"] == "failed" and failed["stage"] == "failed"
    assert failed["error"] == "ModuleNotFoundError: No module named 'x'"
    assert reg.release("hello", 1)["status"] == "active"
    desired = reg.desired("m1", token)
    assert ids(desired) == [old] and desired["instances"][0]["serve"] is True
    assert reg.client.get("/v1/apps/hello", headers=reg.admin).json()["active_release"] == 1


def test_activation_supersedes_and_stops_old_instances(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("hello")
    v1 = deploy_active(reg, "m1", token, "hello")
    [old] = [i["id"] for i in v1["instances"]]
    v2 = reg.deploy("hello")
    [new] = [i["id"] for i in v2["instances"]]
    reg.report(
        "m1",
        token,
        instances=[
            {"id": old, "state": "running", "port": 5001, "routed": True},
            {"id": new, "state": "running", "port": 5002},
        ],
    )
    assert reg.release("hello", 2)["status"] == "active"
    assert reg.release("hello", 1)["status"] == "superseded"
    assert ids(reg.desired("m1", token)) == [new]
    # during the switch the host still routes the old instance: no gap
    routing = reg.client.get("/v1/routing", headers=reg.admin).json()
    assert [s["host"] for s in routing["apps"][0]["servers"]] == ["m1"]
    reg.report(
        "m1",
        token,
        instances=[
            {"id": old, "state": "stopped"},
            {"id": new, "state": "running", "port": 5002, "routed": True},
        ],
    )
    instances = reg.client.get("/v1/apps/hello/instances", headers=reg.admin).json()
    assert [i["id"] for i in instances] == [new]
    assert reg.release("hello", 2)["stage"] == "routed"


def test_new_deploy_supersedes_a_deploying_one(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("hello")
    v1 = reg.deploy("hello")
    v2 = reg.deploy("hello")
    first = reg.release("hello", 1)
    assert first["status"] == "failed" and first["error"] == "superseded by release 2"
    assert ids(reg.desired("m1", token)) == [i["id"] for i in v2["instances"]]
    assert [
        r["version"] for r in reg.client.get("/v1/apps/hello/releases", headers=reg.admin).json()
    ] == [2, 1]
    # the stopped instance of v1 disappears once the host no longer reports it
    reg.report("m1", token, instances=[])
    instances = reg.client.get("/v1/apps/hello/instances", headers=reg.admin).json()
    assert [i["id"] for i in instances] == [i["id"] for i in v2["instances"]]
    assert v1["instances"][0]["id"] not in [i["id"] for i in instances]


def test_no_machine_host_fails_at_once(reg: TestRegistry) -> None:
    reg.join("f1", role="frontend")
    reg.create_app("hello")
    release = reg.deploy("hello")
    assert release["status"] == "failed"
    assert release["error"] == "no machine host is up to run it"


def test_deploy_deadline(tmp_path: Path, fake_clock: FakeClock) -> None:
    """The deadline is the registry's install allowance plus the release's health timeout."""
    with test_registry(tmp_path, deploy_timeout_s=0.2) as reg:
        token = reg.join("m1")
        reg.create_app("hello")
        files = {"Procfile": "web: python app.py\n", "paas.toml": "[app]\nhealth_timeout = 1\n"}
        release = reg.deploy("hello", files)
        assert release["health_timeout_s"] == 1
        [iid] = [i["id"] for i in release["instances"]]
        reg.report(
            "m1",
            token,
            instances=[{"id": iid, "state": "starting", "port": 5001, "error": "HTTP 500"}],
        )
        fake_clock.advance(1.3)
        got = reg.release("hello", 1)
        assert got["status"] == "failed"
        assert "did not become healthy within 1.2 s (stuck at starting)\nHTTP 500" in got["error"]
        assert ids(reg.desired("m1", token)) == []


def test_scale_active_release(reg: TestRegistry) -> None:
    t1, t2 = reg.join("m1"), reg.join("m2")
    reg.create_app("hello")
    deploy_active(reg, "m1", t1, "hello")
    response = reg.client.patch("/v1/apps/hello", json={"instances": 2}, headers=reg.admin)
    assert response.status_code == 200
    [added] = reg.desired("m2", t2)["instances"]
    assert added["serve"] is True and added["release"] == 1
    reg.client.patch("/v1/apps/hello", json={"instances": 1}, headers=reg.admin)
    total = len(ids(reg.desired("m1", t1))) + len(ids(reg.desired("m2", t2)))
    assert total == 1


def test_delete_app_clears_desired_state(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("hello")
    deploy_active(reg, "m1", token, "hello")
    assert reg.client.delete("/v1/apps/hello", headers=reg.admin).status_code == 204
    assert ids(reg.desired("m1", token)) == []
    assert reg.client.get("/v1/routing", headers=reg.admin).json()["apps"] == []


def test_zero_instances_activates_at_once(reg: TestRegistry) -> None:
    reg.create_app("idle", instances=0)
    release = reg.deploy("idle")
    assert release["status"] == "active"


def test_instance_ids_are_never_reused(reg: TestRegistry) -> None:
    """SQLite reuses a deleted top rowid; an agent would take the new instance for the old."""
    token = reg.join("m1")
    reg.create_app("keep")
    deploy_active(reg, "m1", token, "keep")
    reg.create_app("gone")
    first = deploy_active(reg, "m1", token, "gone")
    [gone_id] = [i["id"] for i in first["instances"]]
    assert reg.client.delete("/v1/apps/gone", headers=reg.admin).status_code == 204
    reg.report("m1", token, instances=[])  # the agent stopped it: its row is deleted
    reg.create_app("next")
    [new_id] = [i["id"] for i in reg.deploy("next")["instances"]]
    assert new_id > gone_id
