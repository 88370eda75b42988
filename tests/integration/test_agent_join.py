"""Both agents join through the one join (agent/link/join.py): a wrong join token is a refusal
no retry can fix, so a frontend stops with the registry's error exactly as a machine agent
does, instead of retrying it forever. Real HAProxy and nginx; a fake registry over
httpx.MockTransport that refuses the token the way the real one does (401)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.errors import RegistryCallFailed
from agent.frontend.agent import FrontendAgent
from agent.machine.agent import MachineAgent
from agent.settings import AgentSettings
from tests.conftest import free_port, short_dir
from tests.integration.test_haproxy_real import force_kill, frontend_settings


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Overrides pytest's: a machine agent shares its state folder with app uids, which
    cannot pass through pytest's 0700 /tmp/pytest-of-root."""
    with short_dir("paas-join-") as folder:
        yield folder


class RefusingRegistry:
    """Knows one join token; any other is refused with the real registry's 401."""

    def __init__(self) -> None:
        self.joins = 0
        self.transport = httpx.MockTransport(self.handler)

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/hosts/join":
            self.joins += 1
            if request.headers.get("authorization") != "Bearer join-secret":
                return httpx.Response(401, json={"detail": "unknown or revoked token"})
            return httpx.Response(500, json={"detail": "not in this test"})
        return httpx.Response(404, json={"detail": f"no route {request.url.path}"})


def _stops_with_the_refusal(run: asyncio.Task[None], registry: RefusingRegistry) -> str:
    """The agent's run ended on its own (nobody set `stop`) with the registry's answer."""
    assert run.done()
    error = run.exception()
    assert isinstance(error, RegistryCallFailed), error
    assert error.status == 401 and not error.retryable
    assert registry.joins == 1, "a refused join token was tried again"
    return str(error)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_a_frontend_with_a_wrong_join_token_stops_with_the_registry_error(tmp_path: Path) -> None:
    settings = frontend_settings(tmp_path / "state", join_token="wrong-token")
    registry = RefusingRegistry()
    agent = FrontendAgent(settings, transport=registry.transport)

    async def scenario() -> str:
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        try:
            await asyncio.wait({run}, timeout=15)
            return _stops_with_the_refusal(run, registry)
        finally:
            stop.set()
            with contextlib.suppress(RegistryCallFailed):
                await asyncio.wait_for(run, timeout=30)
            force_kill(agent.process.pid)

    message = asyncio.run(scenario())
    assert "401" in message and "unknown or revoked token" in message
    assert "/v1/hosts/join" in message
    assert not settings.host_token_file.exists()
    assert not agent.process.running()  # HAProxy, started before the join, is stopped


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_a_machine_agent_with_a_wrong_join_token_stops_with_the_same_error(
    tmp_path: Path,
) -> None:
    settings = AgentSettings(
        role="machine",
        registry_url="http://127.0.0.1:9",
        join_token="wrong-token",
        name="m1",
        state_dir=tmp_path / "state",
        proxy_port=free_port(),
        api_port=free_port(),
    )
    registry = RefusingRegistry()
    agent = MachineAgent(settings, transport=registry.transport)

    async def scenario() -> str:
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        try:
            await asyncio.wait({run}, timeout=15)
            return _stops_with_the_refusal(run, registry)
        finally:
            stop.set()
            with contextlib.suppress(RegistryCallFailed):
                await asyncio.wait_for(run, timeout=30)

    message = asyncio.run(scenario())
    assert "401" in message and "unknown or revoked token" in message
    assert "/v1/hosts/join" in message
    assert not settings.host_token_file.exists()
    assert not agent.nginx.running
