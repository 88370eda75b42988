"""A machine agent that dies without stopping anything (what SIGKILL leaves behind) and a new
one started on the same state while the registry is down: it adopts nginx and the instances
still running (same pids, no failed request), restarts the one that died meanwhile, stops the
one that left the desired state, and restarts nothing when the registry answers again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.machine.agent import MachineAgent
from agent.machine.run.runrecords import stray_groups
from agent.machine.run.supervisor import Policy
from tests.conftest import short_dir
from tests.integration.test_machine_agent import (
    SICK_PY,
    Hammer,
    _desired,
    _free_port,
    _routed,
    machine_settings,
    recorded_pid,
)
from tests.support.fake_registry import FakeRegistry


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Overrides pytest's: apps run as their own uids and must pass through every parent of
    the state folder, but each pytest session on this machine resets /tmp/pytest-of-root to
    0700, which would cut running apps off their folders mid-test."""
    with short_dir("paas-agent-") as folder:
        yield folder


class KilledAgent(MachineAgent):
    """Stops like a SIGKILLed agent: its instances and nginx keep running, records stay."""

    async def _shutdown(self) -> None:
        await self.health.aclose()
        await self.client.aclose()


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: in this test the first agent's children are ours to reap)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _running(agent: MachineAgent, iid: int) -> bool:
    inst = agent.instances.get(iid)
    return inst is not None and inst.state == "running" and iid in agent.proxy.routed


def test_restarted_agent_adopts_what_runs_while_the_registry_is_down(tmp_path: Path) -> None:
    proxy_port = _free_port()
    state = tmp_path / "state"
    settings = machine_settings(state, proxy_port)
    policy = Policy(stop_grace_s=3, backoff_base_s=0.1)
    leftovers: list[int] = []

    async def scenario() -> None:
        registry = FakeRegistry("m1")
        sha = registry.add_artifact({"Procfile": "web: python app.py\n", "app.py": SICK_PY})
        env = {"SICK_FLAG": str(tmp_path / "never")}
        kept, died, left = (
            _desired(1, sha, serve=True, env=env),
            _desired(2, sha, app="other", serve=True, env=env),
            _desired(3, sha, app="third", serve=True, env=env),
        )
        first = KilledAgent(settings, transport=registry.transport, policy=policy)
        stop = asyncio.Event()
        runner = asyncio.create_task(first.run(stop))
        try:
            registry.set_desired([kept, died, left])
            await registry.until("all routed", lambda: all(_routed(registry, i) for i in (1, 2, 3)))
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)
        pids = {i: recorded_pid(state, i) for i in (1, 2, 3)}
        nginx_pid = first.nginx.pid
        leftovers.extend([*pids.values(), nginx_pid or 0])

        # While no agent runs: the registry goes down, instance 2 dies, and instance 3 left
        # the desired state (saved, not acted on).
        registry.down = True
        reports_before = len(registry.reports)
        os.killpg(pids[2], signal.SIGKILL)
        saved = json.loads((state / "desired.json").read_text())
        saved["instances"] = [i for i in saved["instances"] if i["id"] != 3]
        (state / "desired.json").write_text(json.dumps(saved))

        second = MachineAgent(settings, transport=registry.transport, policy=policy, drain_s=0.2)
        stop = asyncio.Event()
        runner = None
        try:
            async with Hammer(proxy_port, "hello.paas.test") as load:
                runner = asyncio.create_task(second.run(stop))
                await registry.until("1 adopted", lambda: _running(second, 1), timeout_s=15)
                await registry.until("2 restarted", lambda: _running(second, 2), timeout_s=15)
                await registry.until("3 stopped", lambda: _gone(pids[3]), timeout_s=15)
                assert recorded_pid(state, 1) == pids[1] and second.nginx.pid == nginx_pid
                assert recorded_pid(state, 2) != pids[2]
                assert len(registry.reports) == reports_before  # all without the registry
                running = {recorded_pid(state, 1), recorded_pid(state, 2)}
                assert stray_groups(state / "apps", keep=running) == set()

                # The registry is back (same desired state): nothing is restarted.
                registry.instances = [kept, died]
                registry.down = False
                await registry.until(
                    "a report", lambda: len(registry.reports) > reports_before, timeout_s=15
                )
                await registry.until("1 reported routed", lambda: _routed(registry, 1))
                assert recorded_pid(state, 1) == pids[1] and second.nginx.pid == nginx_pid
                assert _running(second, 2)
        finally:
            stop.set()
            if runner is not None:
                await asyncio.wait_for(runner, timeout=30)
        assert load.sent > 10 and load.failures == []
        assert _gone(pids[1]) and not second.nginx.running

    try:
        asyncio.run(scenario())
    finally:
        for pid in leftovers:  # only if the test failed half-way
            if pid and not _gone(pid):
                os.killpg(pid, signal.SIGKILL)
