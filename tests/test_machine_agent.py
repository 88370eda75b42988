"""MachineAgent end to end against a fake registry (httpx.MockTransport) with real processes,
real venvs and the agent's real nginx: install, start, health-check, route, switch releases,
report a crashing app as failed with its log tail."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from agent.launcher import stop_leftovers
from agent.machine import MachineAgent
from agent.settings import AgentSettings
from agent.supervisor import Policy
from common.wire import DesiredInstance, DesiredState, HostReport, InstanceReport

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


def _artifact(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeRegistry:
    """Just enough of docs/api.md: join, blocking desired-state watch, reports, artifacts."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.index = 1
        self.instances: list[DesiredInstance] = []
        self.blobs: dict[str, bytes] = {}
        self.reports: list[HostReport] = []
        self._changed = asyncio.Event()
        self.transport = httpx.MockTransport(self.handle)

    def add_artifact(self, files: dict[str, str]) -> str:
        data = _artifact(files)
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def set_desired(self, instances: list[DesiredInstance]) -> None:
        self.instances = instances
        self.index += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/hosts/join":
            assert request.headers["Authorization"] == "Bearer join-secret"
            return httpx.Response(200, json={"name": self.host, "token": "host-secret"})
        assert request.headers["Authorization"] == "Bearer host-secret"
        if path == f"/v1/hosts/{self.host}/desired":
            seen = int(request.url.params.get("index", "0"))
            wait_s = int(request.url.params["wait"].removesuffix("ms")) / 1000
            if seen >= self.index:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(wait_s, 1.0))
            state = DesiredState(index=self.index, host=self.host, instances=self.instances)
            return httpx.Response(200, content=state.model_dump_json())
        if path == f"/v1/hosts/{self.host}/report":
            self.reports.append(HostReport.model_validate_json(request.content))
            return httpx.Response(204)
        if path.startswith("/v1/artifacts/"):
            return httpx.Response(200, content=self.blobs[path.rsplit("/", 1)[1]])
        return httpx.Response(404, json={"detail": "no such route"})

    def latest(self, iid: int) -> InstanceReport | None:
        if not self.reports:
            return None
        return next((r for r in self.reports[-1].instances if r.id == iid), None)

    async def until(
        self, what: str, predicate: Callable[[], bool], *, timeout_s: float = 30.0
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.02)
        last = self.reports[-1].model_dump_json() if self.reports else "no report"
        raise AssertionError(f"timed out waiting for {what}; last report: {last}")


def _desired(
    iid: int,
    sha: str,
    *,
    app: str = "hello",
    release: int = 1,
    serve: bool = False,
    command: str = "python app.py",
) -> DesiredInstance:
    return DesiredInstance(
        id=iid,
        app=app,
        release=release,
        process="web",
        command=command,
        artifact_sha256=sha,
        env={"GREETING": "hi"},
        health_path="/",
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
        registry_url="http://registry.test",
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
            venvs = [p.name for p in (settings.state_dir / "venvs").iterdir()]
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


def test_leftover_instances_of_an_earlier_run_are_stopped(tmp_path: Path) -> None:
    """Only process groups running from under apps/ are ended; a recycled pid is left alone."""
    apps = tmp_path / "apps" / "hello" / "releases" / "1"
    apps.mkdir(parents=True)
    pid_dir = tmp_path / "run"
    pid_dir.mkdir()
    ours = subprocess.Popen(["sleep", "60"], cwd=apps, start_new_session=True)
    stranger = subprocess.Popen(["sleep", "60"], cwd=tmp_path, start_new_session=True)
    try:
        (pid_dir / "1.pid").write_text(f"{ours.pid}\n")
        (pid_dir / "2.pid").write_text(f"{stranger.pid}\n")
        (pid_dir / "3.pid").write_text("not a pid\n")
        assert stop_leftovers(pid_dir, tmp_path / "apps", grace_s=2.0) == 1
        assert ours.wait(timeout=5) is not None
        assert stranger.poll() is None
        assert list(pid_dir.iterdir()) == []
    finally:
        for proc in (ours, stranger):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
