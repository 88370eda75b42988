"""Issue 12, resource bounds for real (root, the cgroup hierarchy this machine has):

- an instance with `memory = "64M"` that allocates 200 MB is killed by its cgroup, reported
  as "out of memory (limit 64M)", restarted with back-off and routed again, while a
  neighbour app keeps answering through nginx with no failed request;
- a fork bomb in an app stops at the app's pids limit;
- a second app may not bind the port of an app that restarts: the agent routes a port only
  when the app's own uid listens on it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from agent import procs
from agent.machine.agent import MachineAgent
from agent.machine.checks import InstanceChecks
from agent.machine.health import listener_uids
from agent.machine.run.cgroups import Cgroups, Limits
from agent.machine.run.supervisor import Policy
from common.wire import DesiredInstance
from tests.conftest import short_dir
from tests.integration.test_machine_agent import (
    APP_PY,
    Hammer,
    _desired,
    _free_port,
    _routed,
    machine_settings,
    recorded_pid,
)
from tests.support.fake_registry import FakeRegistry
from tests.support.isolation_support import uid_range

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and app uids need root")

HOG_PY = """
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/eat":
            self.server.food = "x" * (200 << 20)  # 200 MB, every page touched
        body = b"hog"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def _cgroups() -> Cgroups | None:
    return Cgroups.detect("paas-test-" + os.urandom(4).hex())


def test_out_of_memory_is_reported_restarted_and_the_neighbour_keeps_answering() -> None:
    if _cgroups() is None:
        pytest.skip("no usable cgroup hierarchy here")
    proxy_port = _free_port()
    low, high = uid_range()

    async def scenario(state: Path) -> None:
        registry = FakeRegistry("m1")
        hog_sha = registry.add_artifact({"Procfile": "web: python app.py\n", "app.py": HOG_PY})
        calm_sha = registry.add_artifact(
            {"Procfile": "web: python app.py\n", "app.py": APP_PY.format(version="calm")}
        )
        policy = Policy(backoff_base_s=0.5, running_check_interval_s=0.2)
        settings = machine_settings(state, proxy_port, app_uids=f"{low}-{high}")
        agent = MachineAgent(settings, transport=registry.transport, policy=policy)
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            hog: DesiredInstance = _desired(1, hog_sha, app="hog", serve=True).model_copy(
                update={"memory_mb": 64}
            )
            registry.set_desired([hog, _desired(2, calm_sha, app="calm", serve=True)])
            await registry.until(
                "both routed", lambda: _routed(registry, 1) and _routed(registry, 2)
            )
            first = recorded_pid(state, 1)
            port = registry.latest(1).port  # type: ignore[union-attr]
            assert agent.cgroups is not None
            async with Hammer(proxy_port, "calm.paas.test") as load:
                async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                    with pytest.raises(httpx.HTTPError):
                        await client.get(f"http://127.0.0.1:{port}/eat")

                def reported_oom() -> bool:
                    return any(
                        r.id == 1 and "out of memory (limit 64M)" in (r.error or "")
                        for report in registry.reports
                        for r in report.instances
                    )

                await registry.until("reported out of memory", reported_oom)
                # Out of service meanwhile (back-off, then starting; reports may merge them).
                assert all(
                    r.state in ("backoff", "starting", "stopped")
                    for report in registry.reports
                    for r in report.instances
                    if r.id == 1 and "out of memory" in (r.error or "")
                )
                await registry.until(
                    "hog restarted and routed",
                    lambda: (
                        _routed(registry, 1)
                        and registry.latest(1).state == "running"  # type: ignore[union-attr]
                        and recorded_pid(state, 1) != first
                    ),
                )
                # It went through the supervisor's back-off (a failed run, counted).
                assert agent.instances[1].supervisor.failed_starts >= 1  # type: ignore[union-attr]
                await asyncio.sleep(0.5)
            assert load.sent > 20 and load.failures == [], load.failures[:3]
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)

    with short_dir("paas-oom-") as folder:
        asyncio.run(scenario(folder / "state"))


def test_a_fork_bomb_stops_at_the_apps_pids_limit() -> None:
    cgroups = _cgroups()
    if cgroups is None:
        pytest.skip("no usable cgroup hierarchy here")
    low, _ = uid_range()
    bomb = (
        "import os, time\n"
        "count = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        count += 1\n"
        "except OSError as exc:\n"
        "    print(count, exc.errno, flush=True)\n"
        "    os.killpg(0, 9)  # the children hold our stdout: end them (and us) now\n"
    )
    with short_dir("paas-bomb-") as folder:
        os.chmod(folder, 0o711)
        try:
            files = cgroups.prepare("bomb", "run", Limits(pids_max=40))
            user = procs.AppUser(uid=low, gid=low).in_cgroups(files)
            started = time.monotonic()
            result = procs.run(
                ["python3", "-c", bomb],
                timeout_s=60,
                env={"PATH": "/usr/bin:/bin"},
                cwd=folder,
                user=user,
                check=False,
            )
            count, code = (int(x) for x in result.output.split())
            assert code == errno.EAGAIN
            assert count < 40
            assert time.monotonic() - started < 30  # stopped by the limit, not by a timeout
        finally:
            deadline = time.monotonic() + 10
            cgroups.remove("bomb")
            while any(p.exists() for p in cgroups.app_paths("bomb").values()):
                assert time.monotonic() < deadline, "the bomb's cgroup did not empty"
                time.sleep(0.1)
                cgroups.remove("bomb")
            cgroups.cleanup()
            assert not any(base.exists() for base in cgroups.bases.values())


def test_listener_uids_name_the_socket_owner() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert listener_uids(port) == {os.geteuid()}
    assert listener_uids(port) == set()


def test_a_port_taken_by_another_uid_is_not_routed(tmp_path: Path) -> None:
    """The check the agent makes before it calls an instance healthy."""
    low, _ = uid_range()
    with short_dir("paas-steal-") as folder:
        os.chmod(folder, 0o711)
        port = _free_port()
        thief = procs.spawn(
            [
                "python3",
                "-c",
                "import os, socket, time\n"
                "s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen()\n"
                "print('listening', flush=True); time.sleep(30)\n",
            ],
            env={"PATH": "/usr/bin:/bin", "PORT": str(port)},
            cwd=folder,
            log_path=folder / "thief.log",
            user=procs.AppUser(uid=low + 1, gid=low + 1),
        )
        try:
            deadline = time.monotonic() + 10
            while "listening" not in (folder / "thief.log").read_text():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert listener_uids(port) == {low + 1}

            class Users:
                def uid_of(self, app: str) -> int:
                    return low  # the victim app's uid

            checks = InstanceChecks(
                None,  # type: ignore[arg-type]  # no HTTP check here
                Users(),  # type: ignore[arg-type]
                worker_up_s=1.0,
                checked=lambda: None,
            )
            ok, detail = checks.listener_is_the_app("victim", port, "answered 200")
            assert not ok
            assert f"listened on by uid(s) [{low + 1}]" in detail
        finally:
            thief.stop(grace_s=1.0)


def test_instances_past_max_instances_are_refused_with_a_reason() -> None:
    proxy_port = _free_port()

    async def scenario(state: Path) -> None:
        registry = FakeRegistry("m1")
        sha = registry.add_artifact(
            {"Procfile": "web: python app.py\n", "app.py": APP_PY.format(version="one")}
        )
        settings = machine_settings(state, proxy_port, max_instances=1)
        agent = MachineAgent(settings, transport=registry.transport)
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            registry.set_desired([_desired(1, sha, serve=True), _desired(2, sha, serve=True)])
            await registry.until("1 routed", lambda: _routed(registry, 1))
            await registry.until(
                "2 refused",
                lambda: (
                    registry.latest(2) is not None and registry.latest(2).state == "failed"  # type: ignore[union-attr]
                ),
            )
            assert "at most 1 instances (max_instances)" in (registry.latest(2).error or "")  # type: ignore[union-attr]
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)

    with short_dir("paas-cap-") as folder:
        asyncio.run(scenario(folder / "state"))


def test_a_clean_shutdown_ends_what_escaped_its_process_group(tmp_path: Path) -> None:
    """A process that left its instance's process group (setsid) is out of reach of the
    instance's stop; the apps' cgroups live outside the agent's unit, so the agent's clean
    shutdown ends it and removes the cgroups."""
    name = "paas-t" + os.urandom(4).hex()
    cgroups = Cgroups.detect(name)
    if cgroups is None:
        pytest.skip("no usable cgroup hierarchy here")
    procs_files = cgroups.prepare("shop", "i1", Limits(memory_mb=64))
    escaped = procs.spawn(
        ["/bin/sh", "-c", 'for f in "$@"; do echo $$ > "$f"; done; exec setsid sleep 300', "sh"]
        + [str(f) for f in procs_files],
        env={"PATH": "/usr/bin:/bin"},
        cwd=Path("/"),
        log_path=tmp_path / "out.log",
    )
    deadline = time.monotonic() + 5
    while not all((f.read_text().split()) for f in procs_files):
        assert time.monotonic() < deadline, "the process never joined its cgroups"
        time.sleep(0.02)
    cgroups.cleanup()
    assert escaped.wait(5.0) is not None, "the escaped process still runs"
    assert not any(base.exists() for base in cgroups.bases.values())
