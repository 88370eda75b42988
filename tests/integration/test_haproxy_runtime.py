"""Server slots and HAProxy's runtime API: a change of an app's server set is applied to the
running worker without a reload, and the files say the same so a later reload keeps it.

The pure parts (slot assignment, the command list) are tested with plain values; the rest
against a real HAProxy driven by the real FrontendAgent's apply path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from collections import Counter
from pathlib import Path

import pytest

from agent.frontend.agent import FrontendAgent
from agent.frontend.default_cert import ensure_default_cert
from agent.proxy.haproxy.runtime import runtime_commands
from agent.proxy.haproxy.slots import SLOT_STEP, ServerView, assign_slots
from agent.proxy.haproxy.view import build_view
from common.wire import RouteApp, RouteServer, RoutingTable
from tests.integration.test_haproxy_real import (
    echo_server,
    force_kill,
    frontend_settings,
    https_get,
)


def server(host: str, port: int, address: str = "10.0.0.1") -> ServerView:
    return ServerView(
        name=host, endpoint=f"{address}:{port}", host=host, address=address, port=port
    )


def routing(
    index: int, servers: dict[str, list[tuple[str, int]]], **extra: list[str]
) -> RoutingTable:
    apps = []
    for app, hosts in sorted(servers.items()):
        domains = [f"{app}.localhost", *extra.get(app, [])]
        apps.append(
            RouteApp(
                name=app,
                domains=domains,
                servers=[RouteServer(host=h, address="127.0.0.1", port=p) for h, p in hosts],
            )
        )
    return RoutingTable(index=index, apps=apps)


def view(table: RoutingTable, previous: object = None):  # type: ignore[no-untyped-def]
    return build_view(
        table,
        bind_address="127.0.0.1",
        http_port=80,
        https_port=443,
        cert_path=Path("/var/lib/paas/tls/default.pem"),
        admin_socket=Path("/var/lib/paas/haproxy/admin.sock"),
        previous=previous,  # type: ignore[arg-type]
    ).view


# ---- pure ---------------------------------------------------------------------------------


def test_servers_keep_their_slots_and_new_ones_take_free_slots() -> None:
    first = assign_slots([server("m1", 1), server("m2", 2)])
    assert [s.host for s in first] == ["m1", "m2", None, None]
    second = assign_slots([server("m2", 2), server("m3", 3)], first)
    assert [s.host for s in second] == ["m3", "m2", None, None]  # m2 stays in s2
    assert [s.name for s in second] == ["s1", "s2", "s3", "s4"]


def test_more_servers_than_slots_grow_by_a_step_and_never_shrink() -> None:
    many = [server(f"m{n}", n) for n in range(1, SLOT_STEP + 2)]
    grown = assign_slots(many)
    assert len(grown) == 2 * SLOT_STEP
    assert len(assign_slots([server("m1", 1)], grown)) == 2 * SLOT_STEP


def test_runtime_commands_for_a_server_set_change() -> None:
    live = view(routing(1, {"shop": [("m1", 8001), ("m2", 8002)]}))
    new = view(routing(2, {"shop": [("m2", 8002), ("m3", 8003)]}), live)
    assert runtime_commands(live, new) == [
        "set server app_shop/s1 state maint",
        "set server app_shop/s1 addr 127.0.0.1 port 8003",
        "set server app_shop/s1 state ready",
    ]
    emptied = view(routing(3, {"shop": [("m3", 8003)]}), new)
    assert runtime_commands(new, emptied) == [
        "set server app_shop/s2 state maint",
        "set server app_shop/s2 addr 0.0.0.0 port 1",
    ]
    assert runtime_commands(emptied, view(routing(4, {"shop": [("m3", 8003)]}), emptied)) == []


def test_exact_domains_are_map_updates() -> None:
    live = view(routing(1, {"shop": [("m1", 8001)]}, shop=["old.example.com"]))
    new = view(routing(2, {"shop": [("m1", 8001)]}, shop=["shop.example.com"]), live)
    assert runtime_commands(live, new) == [
        "del map hosts.map old.example.com",
        "add map hosts.map shop.example.com app_shop",
    ]


def test_anything_but_servers_and_exact_domains_needs_a_reload() -> None:
    live = view(routing(1, {"shop": [("m1", 8001)]}))
    assert runtime_commands(live, view(routing(2, {"shop": [], "blog": []}), live)) is None
    wildcard = view(routing(2, {"shop": [("m1", 8001)]}, shop=["*.shop.example"]), live)
    assert runtime_commands(live, wildcard) is None  # map_end matches in file order
    crowd = [(f"m{n}", 8000 + n) for n in range(1, SLOT_STEP + 2)]
    assert runtime_commands(live, view(routing(2, {"shop": crowd}), live)) is None


# ---- real HAProxy -------------------------------------------------------------------------

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")


def served_by(port: int, host: str, tries: int = 12) -> Counter[str]:
    return Counter(https_get(port, host).json()["server"] for _ in range(tries))


@needs_haproxy
def test_scale_change_applies_at_runtime_and_survives_a_reload(tmp_path: Path) -> None:
    settings = frontend_settings(
        tmp_path / "state",
        domain="paas.test",
    )
    https_port = settings.https_port
    agent = FrontendAgent(settings)
    agent.conf_dir.mkdir(parents=True)
    agent.cert_path = ensure_default_cert(tmp_path, "paas.test", now=dt.datetime.now(dt.UTC))

    def worker() -> int:
        info = agent.process._proc_info()
        assert info is not None and len(info.workers) == 1, info
        return info.workers[0]

    async def apply(table: RoutingTable) -> None:
        result = await agent.apply_table(table)
        assert result is not None and result.applied, result
        assert agent.proxy_error is None, agent.proxy_error

    async def scenario(a: int, b: int, c: int) -> None:
        await agent._start_proxy()
        await apply(routing(1, {"shop": [("m1", a)]}))
        pid = worker()
        assert set(served_by(https_port, "shop.localhost")) == {"m1"}

        await apply(routing(2, {"shop": [("m1", a), ("m2", b)]}))  # scale 1 -> 2
        assert worker() == pid  # no reload
        assert set(served_by(https_port, "shop.localhost")) == {"m1", "m2"}

        await apply(routing(3, {"shop": [("m2", b), ("m3", c)]}))  # m1 out, m3 in
        assert worker() == pid
        assert set(served_by(https_port, "shop.localhost")) == {"m2", "m3"}
        live = (agent.conf_dir / "haproxy.cfg").read_text()
        assert f"127.0.0.1:{c}  # m3" in live and f"127.0.0.1:{a}" not in live

        await asyncio.to_thread(agent.process.reload)  # the files hold the same servers
        assert worker() != pid
        assert set(served_by(https_port, "shop.localhost")) == {"m2", "m3"}

        pid = worker()
        await apply(routing(4, {"shop": [("m3", c)], "blog": [("m1", a)]}))  # a new app
        assert worker() != pid  # a full reload
        assert set(served_by(https_port, "shop.localhost")) == {"m3"}
        assert set(served_by(https_port, "blog.localhost")) == {"m1"}

        pid = worker()
        await apply(routing(5, {"shop": [("m3", c)], "blog": [("m1", a)]}, shop=["shop.test"]))
        assert worker() == pid  # a new exact domain: `add map`, no reload
        assert set(served_by(https_port, "shop.test")) == {"m3"}
        assert "shop.test app_shop" in (agent.conf_dir / "hosts.map").read_text()

        await apply(routing(6, {"shop": [], "blog": [("m1", a)]}))  # scaled to 0, domain gone
        assert worker() == pid
        response = https_get(https_port, "shop.localhost")
        assert response.status_code == 503 and "no healthy instance" in response.text
        assert https_get(https_port, "shop.test").status_code == 404

    with echo_server("m1") as a, echo_server("m2") as b, echo_server("m3") as c:
        try:
            asyncio.run(scenario(a, b, c))
        finally:
            pid = agent.process.pid
            try:
                agent.process.stop(grace_s=2)
            finally:
                force_kill(pid)
