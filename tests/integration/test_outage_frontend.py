"""Frontend faults with the real HAProxy and a fake registry: a restart while the registry is
down serves the saved routing table, and a hand-edited template HAProxy refuses is reported
and recovers by itself once fixed, with no new routing change."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from agent.frontend.agent import FrontendAgent
from agent.proxy.render import default_template_dir
from tests.integration.test_haproxy_real import (
    echo_server,
    force_kill,
    frontend_settings,
    https_get,
    table,
    wait_for,
)
from tests.support.fake_registry import FakeRegistry

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")


def _status(port: int, host: str) -> int:
    try:
        return https_get(port, host).status_code
    except httpx.HTTPError as exc:
        return -1 if isinstance(exc, httpx.ConnectError) else -2


def test_frontend_restarted_in_an_outage_serves_the_saved_table_and_recovers_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.frontend.agent.RETRY_REFUSED_S", 0.3)
    state = tmp_path / "state"
    settings = frontend_settings(
        state,
        heartbeat_interval_s=0.2,
        watch_wait_s=1.0,
    )
    https_port = settings.https_port
    registry = FakeRegistry()
    down = threading.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if down.is_set():
            raise httpx.ConnectError("connection refused", request=request)
        return await registry.handle(request)

    def last_report() -> dict[str, object]:
        return registry.last_report()

    async def status(host: str) -> int:
        return await asyncio.to_thread(_status, https_port, host)

    async def scenario(port: int) -> None:
        hello = ("hello", ["hello.localhost"], [port])
        first = FrontendAgent(settings, transport=httpx.MockTransport(handler))
        stop = asyncio.Event()
        runner = asyncio.create_task(first.run(stop))
        try:
            registry.publish(table(2, hello))
            await wait_for(lambda: first.applied_index == 2, "index 2 applied")
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)
        assert (state / "routing.json").stat().st_mode & 0o777 == 0o600
        assert await status("hello.localhost") == -1  # a clean stop stops HAProxy

        down.set()
        reports = len(registry.reports)
        second = FrontendAgent(settings, transport=httpx.MockTransport(handler))
        stop = asyncio.Event()
        runner = asyncio.create_task(second.run(stop))
        try:
            await wait_for(lambda: second.applied_index == 2, "the saved table applied")
            assert await status("hello.localhost") == 200
            assert second.applied_index == 2 and len(registry.reports) == reports

            down.clear()
            await wait_for(lambda: len(registry.reports) > reports, "reports resume")
            override = state / "templates" / "haproxy.cfg.j2"
            good = (default_template_dir() / "haproxy.cfg.j2").read_text()
            override.parent.mkdir()
            override.write_text(good.replace("    mode http\n", "    mode http\n    bogus-kw\n"))
            registry.publish(table(3, ("hello", ["hello.localhost", "hi.localhost"], [port])))
            await wait_for(lambda: last_report().get("proxy_error"), "proxy error reported")
            assert "bogus-kw" in str(last_report()["proxy_error"])
            assert last_report()["applied_index"] == 2
            assert await status("hello.localhost") == 200
            assert await status("hi.localhost") == 404

            override.unlink()  # fixed by hand; no new routing change follows
            await wait_for(lambda: last_report().get("applied_index") == 3, "index 3 applied")
            assert last_report()["proxy_error"] is None
            assert await status("hi.localhost") == 200
        finally:
            pid = second.process.pid
            stop.set()
            try:
                await asyncio.wait_for(runner, timeout=30)
            finally:
                force_kill(pid)

    with echo_server("m1") as port:
        asyncio.run(scenario(port))
