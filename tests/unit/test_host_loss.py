"""Heartbeat TTL: a silent host is marked down, its instances move, and it comes back clean.

The registry's own background tick does the marking (TTL 1 s); the other hosts keep
reporting so only the silent one expires. The registry's clock is the test's (`fake_clock`):
time moves between reports, so a slow machine cannot make a reporting host look silent.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.support.clock import FakeClock
from tests.support.registry_app import TestRegistry, test_registry

TTL_S = 1.0


def _hosts(reg: TestRegistry) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in reg.client.get("/v1/hosts", headers=reg.admin).json()}


def _instances(reg: TestRegistry, app: str) -> list[dict[str, Any]]:
    return reg.client.get(f"/v1/apps/{app}/instances", headers=reg.admin).json()


def _servers(reg: TestRegistry, app: str) -> list[str]:
    table = reg.client.get("/v1/routing", headers=reg.admin).json()
    [entry] = [a for a in table["apps"] if a["name"] == app]
    return [s["host"] for s in entry["servers"]]


def _run_all(reg: TestRegistry, tokens: dict[str, str], hosts: list[str]) -> None:
    """Each host in `hosts` reports every instance it is told to run as running and routed."""
    for host in hosts:
        wanted = reg.desired(host, tokens[host])["instances"]
        items = [
            {"id": i["id"], "state": "running", "port": 20000 + i["id"], "routed": True}
            for i in wanted
        ]
        reg.report(host, tokens[host], instances=items)


def _deploy_two(reg: TestRegistry) -> dict[str, str]:
    tokens = {name: reg.join(name) for name in ("m1", "m2", "m3")}
    reg.create_app("shop", instances=2)
    placed = sorted(i["host"] for i in reg.deploy("shop")["instances"])
    assert len(set(placed)) == 2, placed  # spread over two hosts
    _run_all(reg, tokens, list(tokens))
    assert reg.release("shop", 1)["status"] == "active"
    assert sorted(_servers(reg, "shop")) == placed
    return tokens


class _Ticks:
    """Moves the registry's clock a fifth of the TTL per report round, until the silent host
    is past its TTL; then only real time passes (the registry's tick runs on its own)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.moved = clock, 0.0

    def step(self) -> None:
        if self.moved <= TTL_S:
            self.clock.advance(TTL_S / 5)
            self.moved += TTL_S / 5
        time.sleep(0.05)


def _until_down(reg: TestRegistry, tokens: dict[str, str], lost: str, clock: FakeClock) -> None:
    alive = [h for h in tokens if h != lost]
    ticks = _Ticks(clock)
    deadline = time.monotonic() + 10
    while _hosts(reg)[lost]["state"] != "down":
        assert time.monotonic() < deadline, "the silent host was never marked down"
        _run_all(reg, tokens, alive)
        ticks.step()
    assert all(_hosts(reg)[h]["state"] == "up" for h in alive)


def test_a_silent_host_is_marked_down_and_its_instance_moves(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    with test_registry(tmp_path, heartbeat_ttl_s=TTL_S) as reg:
        tokens = _deploy_two(reg)
        lost = _instances(reg, "shop")[0]["host"]
        _until_down(reg, tokens, lost, fake_clock)
        assert lost not in _servers(reg, "shop")  # the frontends stop routing at once
        assert reg.desired(lost, tokens[lost])["instances"] == []
        spare = ({"m1", "m2", "m3"} - {i["host"] for i in _instances(reg, "shop")}) or None
        assert spare is None  # the third host got the replacement
        _run_all(reg, tokens, [h for h in tokens if h != lost])
        assert sorted(_servers(reg, "shop")) == sorted(set(tokens) - {lost})
        # It never returns: its instance shows as lost (never running, never stopping for
        # ever) and is not counted; the app runs its two instances elsewhere.
        rows = _instances(reg, "shop")
        assert [i["state"] for i in rows if i["host"] == lost] == ["lost"]
        assert sorted(i["state"] for i in rows if i["host"] != lost) == ["running", "running"]
        assert _hosts(reg)[lost]["instances"] == 0


def test_a_returning_host_stops_its_stale_instance(tmp_path: Path, fake_clock: FakeClock) -> None:
    with test_registry(tmp_path, heartbeat_ttl_s=TTL_S) as reg:
        tokens = _deploy_two(reg)
        old = _instances(reg, "shop")[0]
        lost = old["host"]
        _until_down(reg, tokens, lost, fake_clock)
        alive = [h for h in tokens if h != lost]
        _run_all(reg, tokens, alive)
        # The host comes back still running its old instance: it is told to run nothing.
        stale = [{"id": old["id"], "state": "running", "port": old["port"], "routed": True}]
        reg.report(lost, tokens[lost], instances=stale)
        assert _hosts(reg)[lost]["state"] == "up"
        assert reg.desired(lost, tokens[lost])["instances"] == []
        reg.report(lost, tokens[lost], instances=[{"id": old["id"], "state": "stopped"}])
        rows = _instances(reg, "shop")
        assert old["id"] not in {i["id"] for i in rows}
        assert len(rows) == 2 and len({i["host"] for i in rows}) == 2
        assert lost not in _servers(reg, "shop")


def test_an_app_short_of_hosts_is_refilled_when_a_host_returns(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    with test_registry(tmp_path, heartbeat_ttl_s=TTL_S) as reg:
        tokens = {name: reg.join(name) for name in ("m1", "m2")}
        reg.create_app("shop", instances=2)
        reg.deploy("shop")
        _run_all(reg, tokens, list(tokens))
        ticks = _Ticks(fake_clock)
        deadline = time.monotonic() + 10
        while _hosts(reg)["m2"]["state"] != "down":  # m1 keeps reporting, m2 is silent
            assert time.monotonic() < deadline
            _run_all(reg, tokens, ["m1"])
            ticks.step()
        running = [i for i in _instances(reg, "shop") if i["host"] == "m1"]
        assert len(running) == 2  # the only host left runs both
        reg.report("m2", tokens["m2"], instances=[])  # m2 is back: nothing gained by moving
        assert _hosts(reg)["m2"]["state"] == "up"


def test_a_deploy_in_flight_replaces_instances_of_a_lost_host(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    with test_registry(tmp_path, heartbeat_ttl_s=TTL_S) as reg:
        tokens = {name: reg.join(name) for name in ("m1", "m2", "m3")}
        reg.create_app("shop", instances=2)
        placed = {i["host"] for i in reg.deploy("shop")["instances"]}
        lost = sorted(placed)[0]
        _until_down(reg, tokens, lost, fake_clock)
        hosts = {i["host"] for i in reg.release("shop", 1)["instances"] if i["state"] != "stopped"}
        wanted = {h for h in tokens if reg.desired(h, tokens[h])["instances"]}
        assert lost not in wanted and len(wanted) == 2, (hosts, wanted)
        _run_all(reg, tokens, sorted(wanted))
        assert reg.release("shop", 1)["status"] == "active"
