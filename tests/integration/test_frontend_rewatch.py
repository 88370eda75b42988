"""A frontend whose routing watch was lost (sent before a cut, hanging for its whole wait)
watches again as soon as a report's answer shows the registry past that index."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from agent.frontend.agent import FrontendAgent
from common.wire import HostReport, RoutingTable
from tests.integration.test_haproxy_real import force_kill, frontend_settings, table, wait_for
from tests.support.fake_registry import FakeRegistry

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")


class LostWatchRegistry(FakeRegistry):
    """The first watch past index 1 never answers (lost in a cut); reports carry the index."""

    def __init__(self) -> None:
        super().__init__()
        self.lost_once = False

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        watching = path == "/v1/routing" and int(request.url.params.get("index", "0")) >= 1
        if watching and not self.lost_once:
            self.lost_once = True
            await asyncio.Event().wait()  # hangs until the agent gives up on it
        if path == "/v1/hosts/front-1/report":
            self.reports.append(HostReport.model_validate_json(request.content))
            index = str(self.tables[-1].index)
            return httpx.Response(204, headers={"X-Paas-Index": index})
        return await super().handle(request)


def test_a_report_past_the_watch_index_makes_the_frontend_watch_again(tmp_path: Path) -> None:
    settings = frontend_settings(
        tmp_path / "state",
        heartbeat_interval_s=0.2,
        watch_wait_s=60.0,  # a lost watch would hang this long without the re-watch
        domain="paas.test",
    )
    registry = LostWatchRegistry()
    agent = FrontendAgent(settings, transport=httpx.MockTransport(registry.handle))

    async def scenario() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            await wait_for(lambda: agent.applied_index == 1, "index 1 applied")
            await wait_for(lambda: registry.lost_once, "the watch past index 1 is lost")
            new: RoutingTable = table(2, ("hello", ["hello.localhost"], [8081]))
            registry.publish(new)
            await wait_for(lambda: agent.applied_index == 2, "index 2 applied", timeout=5.0)
        finally:
            pid = agent.process.pid
            stop.set()
            try:
                await asyncio.wait_for(runner, timeout=30)
            finally:
                force_kill(pid)

    asyncio.run(scenario())
