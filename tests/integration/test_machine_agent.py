"""MachineAgent end to end against a fake registry (httpx.MockTransport) with real processes,
real venvs and the agent's real nginx: install, start, health-check, route, switch releases,
report a crashing app as failed with its log tail."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.machine.agent import MachineAgent
from agent.machine.run.supervisor import Policy
from agent.proxy.render import default_template_dir
from agent.settings import AgentSettings
from common.wire import DesiredInstance
from tests.conftest import short_dir
from tests.support.fake_registry import FakeRegistry
from tests.support.ports import free_port as _free_port


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Overrides pytest's: apps run as their own uids and must pass through every parent of
    the state folder, but each pytest session on this machine resets /tmp/pytest-of-root to
    0700, which would cut running apps off their folders mid-test."""
    with short_dir("paas-agent-") as folder:
        yield folder


APP_PY = """
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

VERSION = {version!r}

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello {{VERSION}} from {{self.headers.get('Host')}}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

CRASH_PY = "import sys\nprint('boom: DATABASE_URL is not set')\nsys.exit(3)\n"


def _desired(
    iid: int,
    sha: str,
    *,
    app: str = "hello",
    release: int = 1,
    serve: bool = False,
    command: str = "python app.py",
    env: dict[str, str] | None = None,
    health_path: str = "/",
) -> DesiredInstance:
    return DesiredInstance(
        id=iid,
        app=app,
        release=release,
        process="web",
        command=command,
        artifact_sha256=sha,
        env=env if env is not None else {"GREETING": "hi"},
        health_path=health_path,
        domains=[f"{app}.paas.test"],
        serve=serve,
    )


def _state(registry: FakeRegistry, iid: int) -> str | None:
    report = registry.latest(iid)
    return report.state if report else None


def _routed(registry: FakeRegistry, iid: int) -> bool:
    report = registry.latest(iid)
    return bool(report and report.routed)


async def _get(port: int, host: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{port}/", headers={"Host": host})


def test_machine_agent_installs_routes_switches_and_reports_failures(tmp_path: Path) -> None:
    proxy_port = _free_port()
    settings = AgentSettings(
        role="machine",
        registry_url="http://127.0.0.1:9",
        join_token="join-secret",
        name="m1",
        state_dir=tmp_path / "state",
        proxy_port=proxy_port,
        heartbeat_interval_s=0.5,
        watch_wait_s=5.0,
    )

    async def scenario() -> None:
        registry = FakeRegistry("m1")
        v1 = registry.add_artifact(
            {"Procfile": "web: python app.py\n", "app.py": APP_PY.format(version="v1")}
        )
        v2 = registry.add_artifact(
            {"Procfile": "web: python app.py\n", "app.py": APP_PY.format(version="v2")}
        )
        crash = registry.add_artifact({"Procfile": "web: python crash.py\n", "crash.py": CRASH_PY})
        agent = MachineAgent(
            settings,
            transport=registry.transport,
            policy=Policy(backoff_base_s=0.05, max_failed_starts=2, stop_grace_s=3.0),
            drain_s=0.3,
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            # nginx answers from the start, with the default server.
            await registry.until("first report", lambda: bool(registry.reports))
            assert (await _get(proxy_port, "hello.paas.test")).status_code == 404

            # Release 1: installed and started beside nothing, then made to serve.
            registry.set_desired([_desired(1, v1)])
            await registry.until("v1 running", lambda: _state(registry, 1) == "running")
            assert not _routed(registry, 1)
            assert (await _get(proxy_port, "hello.paas.test")).status_code == 503
            registry.set_desired([_desired(1, v1, serve=True)])
            await registry.until("v1 routed", lambda: _routed(registry, 1))
            answer = await _get(proxy_port, "hello.paas.test")
            assert answer.status_code == 200
            assert answer.text == "hello v1 from hello.paas.test"
            saved = json.loads((settings.state_dir / "desired.json").read_text())
            assert saved["instances"][0]["id"] == 1

            # Release 2 (code-only): starts beside v1, then takes over; v1 is stopped.
            old_port = registry.latest(1).port  # type: ignore[union-attr]
            registry.set_desired([_desired(1, v1, serve=True), _desired(2, v2, release=2)])
            await registry.until("v2 running", lambda: _state(registry, 2) == "running")
            assert (await _get(proxy_port, "hello.paas.test")).text.startswith("hello v1")

            failures: list[str] = []
            serving = True

            async def hammer() -> None:
                while serving:
                    try:
                        response = await _get(proxy_port, "hello.paas.test")
                        if response.status_code != 200:
                            failures.append(f"{response.status_code} {response.text}")
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                    await asyncio.sleep(0.01)

            load = asyncio.create_task(hammer())
            registry.set_desired([_desired(2, v2, release=2, serve=True)])
            await registry.until("v2 routed", lambda: _routed(registry, 2))
            await registry.until("v1 gone", lambda: _state(registry, 1) in (None, "stopped"))
            serving = False
            await load
            assert failures == []
            assert (await _get(proxy_port, "hello.paas.test")).text.startswith("hello v2")
            assert any(
                r.id == 1 and r.state in ("stopping", "stopped")
                for report in registry.reports
                for r in report.instances
            )
            venvs = [p.name for p in (settings.state_dir / "apps" / "hello" / "venvs").iterdir()]
            assert venvs == ["none"]
            with socket.socket() as probe:  # the old instance's port is free again
                assert probe.connect_ex(("127.0.0.1", old_port)) != 0

            # An app that crashes at start: reported failed with its log tail; v2 unaffected.
            registry.set_desired(
                [
                    _desired(2, v2, release=2, serve=True),
                    _desired(3, crash, app="crash", command="python crash.py"),
                ]
            )
            await registry.until("crash failed", lambda: _state(registry, 3) == "failed")
            error = registry.latest(3).error or ""  # type: ignore[union-attr]
            assert "boom: DATABASE_URL is not set" in error
            assert "failed starts" in error
            assert _state(registry, 2) == "running" and _routed(registry, 2)
            log_file = settings.state_dir / "logs" / "crash" / "3.log"
            assert "boom" in log_file.read_text()
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)
        # Clean shutdown: nginx and the instances are gone.
        assert not agent.nginx.running
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", proxy_port)) != 0

    asyncio.run(scenario())


# ---- faults: unhealthy and killed instances, a refused nginx template -----------------------

SICK_PY = """
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        sick = self.path == "/health" and os.path.exists(os.environ["SICK_FLAG"])
        body = f"{os.environ.get('PAAS_RELEASE', '?')} pid {os.getpid()}".encode()
        self.send_response(500 if sick else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


class Hammer:
    """A request loop through nginx for as long as the `async with` lasts; records failures.

    A new connection per request: nginx closes idle keep-alive connections when it reloads,
    racing a client that reuses one (in the cluster HAProxy retries those, see its
    `retry-on`; the e2e tests cover keep-alive clients through HAProxy)."""

    def __init__(self, port: int, host: str) -> None:
        self.port, self.host = port, host
        self.sent = 0
        self.failures: list[str] = []
        self.bodies: set[str] = set()
        self._running = True
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Hammer:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._running = False
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout=30)

    async def _loop(self) -> None:
        url = f"http://127.0.0.1:{self.port}/"
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(trust_env=False, timeout=5, limits=limits) as client:
            while self._running:
                self.sent += 1
                try:
                    response = await client.get(url, headers={"Host": self.host})
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text}")
                    else:
                        self.bodies.add(response.text.split(" pid ")[0])
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                await asyncio.sleep(0.005)


def machine_settings(state_dir: Path, proxy_port: int, **extra: object) -> AgentSettings:
    return AgentSettings(
        role="machine",
        registry_url="http://127.0.0.1:9",
        join_token="join-secret",
        name="m1",
        state_dir=state_dir,
        proxy_port=proxy_port,
        heartbeat_interval_s=0.5,
        watch_wait_s=5.0,
        **extra,  # type: ignore[arg-type]
    )


def recorded_pid(state_dir: Path, iid: int) -> int:
    return int(json.loads((state_dir / "run" / f"{iid}.json").read_text())["pid"])


def test_unhealthy_instance_leaves_nginx_and_a_killed_one_is_restarted(tmp_path: Path) -> None:
    """Both faults for real: a health path that answers 500, and kill -9 of an instance.
    Each is reported, and nginx keeps answering from the other instance without a failure."""
    proxy_port = _free_port()
    state = tmp_path / "state"
    flags = {1: tmp_path / "sick-1", 2: tmp_path / "sick-2"}

    async def scenario() -> None:
        registry = FakeRegistry("m1")
        sha = registry.add_artifact({"Procfile": "web: python app.py\n", "app.py": SICK_PY})
        policy = Policy(
            running_check_interval_s=0.1, unhealthy_after=2, backoff_base_s=0.1, stop_grace_s=3
        )
        agent = MachineAgent(
            machine_settings(state, proxy_port), transport=registry.transport, policy=policy
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            registry.set_desired(
                [
                    _desired(i, sha, serve=True, health_path="/health", env={"SICK_FLAG": str(f)})
                    for i, f in flags.items()
                ]
            )
            await registry.until(
                "both routed", lambda: _routed(registry, 1) and _routed(registry, 2)
            )
            async with Hammer(proxy_port, "hello.paas.test") as load:
                flags[1].touch()
                await registry.until("1 unhealthy", lambda: _state(registry, 1) == "unhealthy")
                await registry.until("1 unrouted", lambda: not _routed(registry, 1))
                assert "answered 500" in (registry.latest(1).error or "")  # type: ignore[union-attr]
                assert _routed(registry, 2)
                flags[1].unlink()
                await registry.until("1 routed again", lambda: _routed(registry, 1))
                assert _state(registry, 1) == "running"

                killed = recorded_pid(state, 2)
                os.killpg(killed, signal.SIGKILL)
                await registry.until(
                    "2 restarted", lambda: _routed(registry, 2) and recorded_pid(state, 2) != killed
                )
            assert any(
                r.id == 2 and r.state in ("stopped", "backoff", "starting")
                for report in registry.reports
                for r in report.instances
            ), "the crash of instance 2 was never reported"
            assert load.sent > 10 and load.failures == []
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)

    asyncio.run(scenario())


def test_refused_nginx_template_keeps_the_old_release_serving_and_recovers_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-edited operator template nginx refuses: reported, the departing release keeps
    serving (it is not stopped while the live config routes it); removing the bad template is
    enough to recover, with no new change from the registry."""
    monkeypatch.setattr("agent.machine.proxy.APPLY_RETRY_S", 0.3)
    proxy_port = _free_port()
    state = tmp_path / "state"
    override = state / "templates" / "nginx.conf.j2"  # the default operator template folder

    async def scenario() -> None:
        registry = FakeRegistry("m1")
        sha = registry.add_artifact({"Procfile": "web: python app.py\n", "app.py": SICK_PY})
        env = {"SICK_FLAG": str(tmp_path / "never"), "PAAS_RELEASE": "v1"}
        v1 = _desired(1, sha, serve=True, env=env)
        v2 = _desired(2, sha, release=2, env={**env, "PAAS_RELEASE": "v2"})
        agent = MachineAgent(
            machine_settings(state, proxy_port),
            transport=registry.transport,
            policy=Policy(stop_grace_s=3),
            drain_s=0.2,
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            registry.set_desired([v1])
            await registry.until("v1 routed", lambda: _routed(registry, 1))
            good = (default_template_dir() / "nginx.conf.j2").read_text()
            override.parent.mkdir(parents=True)
            override.write_text(good.replace("events {", "no_such_directive on;\nevents {"))
            async with Hammer(proxy_port, "hello.paas.test") as load:
                registry.set_desired([v1, v2])
                await registry.until("v2 running", lambda: _state(registry, 2) == "running")
                registry.set_desired([v2.model_copy(update={"serve": True})])
                await registry.until("proxy error", lambda: bool(registry.reports[-1].proxy_error))
                error = registry.reports[-1].proxy_error or ""
                assert 'unknown directive "no_such_directive"' in error
                await asyncio.sleep(1.0)  # several refused retries
                assert _routed(registry, 1) and _state(registry, 1) == "running"
                assert not _routed(registry, 2)
                override.unlink()
                await registry.until("v2 routed", lambda: _routed(registry, 2))
                await registry.until("v1 gone", lambda: _state(registry, 1) in (None, "stopped"))
                assert registry.reports[-1].proxy_error is None
                await asyncio.sleep(0.2)
            assert load.failures == []
            assert load.bodies == {"v1", "v2"}
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)

    asyncio.run(scenario())


def test_changed_definition_replaces_the_instance_without_a_failed_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15 item 3: the registry changes a running instance's environment (depends_on
    adds a <NAME>_URL) and changes it again while the first restart is under way. The agent
    replaces the process side by side (new port, nginx switched, old one drained), ends on
    the newest definition, never raises (the `_restart` AttributeError), and nginx answers
    every request meanwhile. A routing-option change restarts nothing."""
    proxy_port = _free_port()
    state = tmp_path / "state"

    async def scenario() -> None:
        registry = FakeRegistry("m1")
        sha = registry.add_artifact({"Procfile": "web: python app.py\n", "app.py": SICK_PY})
        never = str(tmp_path / "never")

        def version(name: str, **extra: object) -> DesiredInstance:
            d = _desired(1, sha, serve=True, env={"SICK_FLAG": never, "PAAS_RELEASE": name})
            return d.model_copy(update=extra)

        agent = MachineAgent(
            machine_settings(state, proxy_port),
            transport=registry.transport,
            policy=Policy(stop_grace_s=3),
            drain_s=0.2,
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            registry.set_desired([version("a")])
            await registry.until("routed", lambda: _routed(registry, 1))
            first_pid = recorded_pid(state, 1)
            async with Hammer(proxy_port, "hello.paas.test") as load:
                registry.set_desired(
                    [
                        version(
                            "b",
                            env={
                                "SICK_FLAG": never,
                                "PAAS_RELEASE": "b",
                                "USERS_URL": "http://127.0.0.1:1",
                            },
                        )
                    ]
                )
                await registry.until("restart under way", lambda: 1 in agent.rollout.restart_to)
                registry.set_desired([version("c")])
                await registry.until("c serves", lambda: "c" in load.bodies)
                await registry.until("restart done", lambda: 1 not in agent.rollout.restart_to)
                await registry.until("old processes gone", lambda: agent.rollout.retiring == [])
                final_pid = recorded_pid(state, 1)
                routing = version("c").routing.model_copy(update={"max_body_mb": 5})
                registry.set_desired([version("c", routing=routing)])
                await registry.until(
                    "routing applied", lambda: "client_max_body_size 5m;" in nginx_conf(state)
                )
            assert load.sent > 10 and load.failures == [], load.failures[:5]
            assert recorded_pid(state, 1) == final_pid != first_pid
            with pytest.raises(ProcessLookupError):
                os.kill(first_pid, 0)
            assert _state(registry, 1) == "running" and _routed(registry, 1)
            assert not [r for r in caplog.records if r.exc_info], "the agent raised"
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)

    asyncio.run(scenario())


def nginx_conf(state: Path) -> str:
    return (state / "nginx" / "conf" / "nginx.conf").read_text()


def test_failed_replacement_keeps_the_old_process_serving_and_recorded(tmp_path: Path) -> None:
    """A changed definition whose new process crashes: the running one keeps serving every
    request, and its run record is back (a restarted agent adopts it, not the dead one)."""
    proxy_port = _free_port()
    state = tmp_path / "state"

    async def scenario() -> None:
        registry = FakeRegistry("m1")
        files = {"Procfile": "web: python app.py\n", "app.py": SICK_PY, "crash.py": CRASH_PY}
        sha = registry.add_artifact(files)
        env = {"SICK_FLAG": str(tmp_path / "never"), "PAAS_RELEASE": "a"}
        agent = MachineAgent(
            machine_settings(state, proxy_port),
            transport=registry.transport,
            policy=Policy(backoff_base_s=0.05, max_failed_starts=1, stop_grace_s=3),
            drain_s=0.2,
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            registry.set_desired([_desired(1, sha, serve=True, env=env)])
            await registry.until("routed", lambda: _routed(registry, 1))
            serving = recorded_pid(state, 1)
            async with Hammer(proxy_port, "hello.paas.test") as load:
                broken = _desired(1, sha, serve=True, env=env, command="python crash.py")
                registry.set_desired([broken])
                await registry.until("restart under way", lambda: 1 in agent.rollout.restart_to)
                await registry.until("restart given up", lambda: 1 not in agent.rollout.restart_to)
                await registry.until("replacement gone", lambda: agent.rollout.retiring == [])
                sent = load.sent
                await registry.until("requests after it", lambda: load.sent > sent + 10)
            assert load.failures == [], load.failures[:5]
            assert load.bodies == {"a"}
            assert recorded_pid(state, 1) == serving
            os.kill(serving, 0)  # still alive
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=30)

    asyncio.run(scenario())
