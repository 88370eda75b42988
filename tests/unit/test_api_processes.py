"""Worker processes through the API: placement per type, ps:scale of several types, a
deploy that waits for (and fails with) its workers, routing that ignores them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.registry_app import TestRegistry, test_registry

FILES = {"Procfile": "web: python app.py\nworker: python w.py\n"}


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path) as registry:
        yield registry


def by_process(release: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for item in release["instances"]:
        found.setdefault(item["process"], []).append(item)
    return found


def instances(reg: TestRegistry, app: str) -> list[dict[str, Any]]:
    response = reg.client.get(f"/v1/apps/{app}/instances", headers=reg.admin)
    assert response.status_code == 200, response.text
    return response.json()


def scale(reg: TestRegistry, app: str, counts: dict[str, int]) -> Any:
    return reg.client.patch(f"/v1/apps/{app}", json={"process_counts": counts}, headers=reg.admin)


def run_all(reg: TestRegistry, tokens: dict[str, str], release: dict[str, Any]) -> None:
    """Each host reports its instances running; only web ones are routed (as agents do)."""
    for host, token in tokens.items():
        mine = [i for i in release["instances"] if i["host"] == host]
        reg.report(
            host,
            token,
            instances=[
                {
                    "id": i["id"],
                    "state": "running",
                    "port": 5001 if i["process"] == "web" else None,
                    "routed": i["process"] == "web",
                }
                for i in mine
            ],
        )


def test_a_deploy_places_one_worker_per_type_and_waits_for_it(reg: TestRegistry) -> None:
    tokens = {"m1": reg.join("m1"), "m2": reg.join("m2", address="127.0.0.2")}
    front = reg.join("f1", role="frontend")
    reg.create_app("shop")
    release = reg.deploy("shop", FILES)
    placed = by_process(release)
    assert sorted(placed) == ["web", "worker"]  # release is not an instance
    [web], [worker] = placed["web"], placed["worker"]
    assert web["host"] != worker["host"]  # spread: the worker goes to the emptier host

    desired = reg.desired(worker["host"], tokens[worker["host"]])
    [item] = desired["instances"]
    assert (item["process"], item["command"]) == ("worker", "python w.py")

    web_host = web["host"]
    reg.report(
        web_host,
        tokens[web_host],
        instances=[{"id": web["id"], "state": "running", "port": 5001, "routed": True}],
    )
    assert reg.release("shop", 1)["status"] == "deploying"  # the worker is not up yet
    run_all(reg, tokens, release)
    got = reg.release("shop", 1)
    assert got["status"] == "active"
    routing = reg.client.get("/v1/routing", headers=reg.headers(front)).json()
    [route] = routing["apps"]
    assert [s["host"] for s in route["servers"]] == [web_host]  # the worker host is not routed


def test_a_crashing_worker_fails_the_release_and_the_old_one_keeps_running(
    reg: TestRegistry,
) -> None:
    token = reg.join("m1")
    reg.create_app("shop")
    first = reg.deploy("shop", FILES)
    run_all(reg, {"m1": token}, first)
    assert reg.release("shop", 1)["status"] == "active"
    second = reg.deploy("shop", FILES)
    worker = by_process(second)["worker"][0]
    reg.report(
        "m1",
        token,
        instances=[{"id": worker["id"], "state": "failed", "error": "exited with status 1"}],
    )
    got = reg.release("shop", 2)
    assert (got["status"], got["error"]) == ("failed", "exited with status 1")
    assert reg.release("shop", 1)["status"] == "active"
    running = {i["id"] for i in reg.desired("m1", token)["instances"]}
    assert running == {i["id"] for i in first["instances"]}


def test_ps_scale_several_types_at_once(reg: TestRegistry) -> None:
    tokens = {"m1": reg.join("m1"), "m2": reg.join("m2", address="127.0.0.2")}
    reg.create_app("shop")
    release = reg.deploy("shop", FILES)
    run_all(reg, tokens, release)

    response = scale(reg, "shop", {"web": 2, "worker": 3})
    assert response.status_code == 200, response.text
    assert (response.json()["instances"], response.json()["process_counts"]) == (2, {"worker": 3})
    wanted = [i for i in instances(reg, "shop")]
    workers = [i for i in wanted if i["process"] == "worker"]
    assert len([i for i in wanted if i["process"] == "web"]) == 2
    assert len(workers) == 3 and {i["host"] for i in workers} == {"m1", "m2"}

    assert scale(reg, "shop", {"worker": 0}).status_code == 200
    desired = (
        reg.desired("m1", tokens["m1"])["instances"] + reg.desired("m2", tokens["m2"])["instances"]
    )
    assert sorted(i["process"] for i in desired) == ["web", "web"]

    next_release = reg.deploy("shop", FILES)  # the counts stay for the next deploy
    assert "worker" not in by_process(next_release)
    assert len(by_process(next_release)["web"]) == 2


def test_ps_scale_refuses_release_and_unknown_types(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("shop")
    run_all(reg, {"m1": token}, reg.deploy("shop", FILES))
    for counts in ({"release": 1}, {"clock": 1}):
        response = scale(reg, "shop", counts)
        assert response.status_code == 422, response.text
    assert scale(reg, "shop", {"Bad": 1}).status_code == 422
    assert scale(reg, "shop", {"worker": 101}).status_code == 422


def test_a_release_phase_comes_before_any_instance(reg: TestRegistry) -> None:
    """The release phase runs on a host's agent API; these fake hosts have none, so it fails
    the release (with why), and nothing of it was ever placed."""
    token = reg.join("m1")
    reg.create_app("shop")
    run_all(reg, {"m1": token}, reg.deploy("shop", FILES))
    procfile = FILES["Procfile"] + "release: python migrate.py\n"
    created = reg.deploy("shop", {"Procfile": procfile})
    assert (created["stage"], created["instances"]) == ("release phase", [])
    got = reg.release("shop", 2)
    assert got["status"] == "failed" and got["instances"] == []
    assert "release phase not run: host m1 has not reported an agent API" in got["error"]
    assert reg.release("shop", 1)["status"] == "active"
