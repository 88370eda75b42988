"""The routing table: a host whose instances of an app are all leaving (scaled down) drops out
at the scale's own index while the app keeps another serving host; the agent keeps routing it
for a grace period (agent/machine/proxy.py), so no request meets a host without the app."""

from __future__ import annotations

from pathlib import Path

from tests.support.registry_app import TestRegistry, test_registry


def _servers(reg: TestRegistry, app: str) -> list[str]:
    table = reg.client.get("/v1/routing", headers=reg.admin).json()
    [entry] = [a for a in table["apps"] if a["name"] == app]
    return sorted(s["host"] for s in entry["servers"])


def _report_routed(reg: TestRegistry, tokens: dict[str, str], host: str) -> None:
    """`host` reports every instance it knows as running and still routed (as an agent does
    until its nginx stops routing a departing instance)."""
    rows = reg.client.get("/v1/apps/shop/instances", headers=reg.admin).json()
    items = [
        {"id": i["id"], "state": "running", "port": 20000 + i["id"], "routed": True}
        for i in rows
        if i["host"] == host
    ]
    reg.report(host, tokens[host], instances=items)


def _scale(reg: TestRegistry, count: int) -> None:
    response = reg.client.patch("/v1/apps/shop", json={"instances": count}, headers=reg.admin)
    assert response.status_code == 200, response.text


def test_a_scaled_down_host_leaves_the_routing_table_at_once(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        tokens = {name: reg.join(name) for name in ("m1", "m2")}
        reg.create_app("shop", instances=2)
        reg.deploy("shop")
        for host in tokens:
            _report_routed(reg, tokens, host)
        assert _servers(reg, "shop") == ["m1", "m2"]
        _scale(reg, 1)
        leaving = [h for h in tokens if not reg.desired(h, tokens[h])["instances"]]
        assert len(leaving) == 1
        for host in tokens:  # the leaving host still routes its instance (grace period)
            _report_routed(reg, tokens, host)
        assert _servers(reg, "shop") == sorted(set(tokens) - set(leaving))


def test_the_last_serving_host_stays_while_it_leaves(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        tokens = {"m1": reg.join("m1")}
        reg.create_app("shop", instances=1)
        reg.deploy("shop")
        _report_routed(reg, tokens, "m1")
        _scale(reg, 0)
        _report_routed(reg, tokens, "m1")
        assert _servers(reg, "shop") == ["m1"]  # nothing else serves it: never an empty set
