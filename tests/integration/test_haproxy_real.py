"""The frontend edge against the real HAProxy: TLS, routing, redirects, seamless reloads,
a refused template, and the whole FrontendAgent driven by a fake registry.

The registry side is an httpx.MockTransport; HAProxy and the "machine host" (a tiny
http.server echoing the headers it got) are real, on free loopback ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from agent.frontend.agent import FrontendAgent, worker_identity
from agent.frontend.default_cert import ensure_default_cert
from agent.proxy.config_apply import ApplyResult, ConfigApplier
from agent.proxy.haproxy.process import HaproxyProcess
from agent.proxy.haproxy.view import MAIN_FILE, build_view, render_files
from agent.proxy.render import default_template_dir, make_environment, template_dirs
from agent.settings import AgentSettings
from common.wire import RouteApp, RouteServer, RoutingTable
from tests.conftest import free_ports
from tests.support.fake_registry import FakeRegistry

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")


def frontend_settings(state_dir: Path, **overrides: object) -> AgentSettings:
    """A frontend agent's settings for these tests: free HTTP/HTTPS ports, a fake registry."""
    http_port, https_port = free_ports(2)
    values: dict[str, object] = {
        "role": "frontend",
        "registry_url": "http://127.0.0.1:9",
        "join_token": "join-secret",
        "name": "front-1",
        "state_dir": state_dir,
        "http_port": http_port,
        "https_port": https_port,
        **overrides,
    }
    return AgentSettings(**values)  # type: ignore[arg-type]


# ---- the fake machine host ----------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps(
            {
                "server": self.server.label,  # type: ignore[attr-defined]
                "path": self.path,
                "host": self.headers.get("Host"),
                "xff": self.headers.get_all("X-Forwarded-For"),
                "proto": self.headers.get("X-Forwarded-Proto"),
                "xhost": self.headers.get("X-Forwarded-Host"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def echo_server(label: str) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.label = label  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---- the frontend pieces ------------------------------------------------------------------


@dataclass
class Front:
    state: Path
    http_port: int
    https_port: int
    cert: Path
    process: HaproxyProcess
    applier: ConfigApplier
    template_dir: Path | None = None

    def apply(self, table: RoutingTable) -> ApplyResult:
        env = make_environment(template_dirs(self.template_dir))
        built = build_view(
            table,
            bind_address="127.0.0.1",
            http_port=self.http_port,
            https_port=self.https_port,
            cert_path=self.cert,
            admin_socket=self.state / "haproxy" / "admin.sock",
            run_as=worker_identity(),
        )
        assert built.errors == ()
        return self.applier.apply(render_files(env, built.view))


def force_kill(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Front]:
    http_port, https_port = free_ports(2)
    base = tmp_path / "haproxy"
    process = HaproxyProcess(
        binary="haproxy",
        config=base / "conf" / MAIN_FILE,
        pid_file=base / "haproxy.pid",
        master_socket=base / "master.sock",
        log_file=base / "haproxy.log",
    )
    applier = ConfigApplier(
        base / "conf", MAIN_FILE, validate=process.validate, reload=process.reload
    )
    cert = ensure_default_cert(tmp_path, "paas.test", now=dt.datetime.now(dt.UTC))
    started = Front(tmp_path, http_port, https_port, cert, process, applier)
    try:
        yield started
    finally:
        pid = process.pid
        try:
            process.stop(grace_s=2)
        finally:
            force_kill(pid)


def table(index: int, *apps: tuple[str, list[str], list[int]]) -> RoutingTable:
    return RoutingTable(
        index=index,
        apps=[
            RouteApp(
                name=name,
                domains=domains,
                servers=[
                    RouteServer(host=f"m{i}", address="127.0.0.1", port=port)
                    for i, port in enumerate(ports, start=1)
                ],
            )
            for name, domains, ports in apps
        ],
    )


def https_get(port: int, host: str, path: str = "/", **headers: str) -> httpx.Response:
    """A fresh TLS connection with SNI = Host = `host` to 127.0.0.1:`port`."""
    with httpx.Client(verify=False, timeout=5) as client:
        return client.get(
            f"https://127.0.0.1:{port}{path}",
            headers={"Host": host, **headers},
            extensions={"sni_hostname": host},
        )


# ---- tests --------------------------------------------------------------------------------


def test_https_routing_headers_redirect_and_404(front: Front) -> None:
    with echo_server("m1") as port:
        result = front.apply(
            table(
                1,
                ("hello", ["hello.localhost", "*.apps.test"], [port]),
                ("idle", ["idle.localhost"], []),
            )
        )
        assert result.applied and result.error is None, result.error

        response = https_get(
            front.https_port, "hello.localhost", "/p?q=1", **{"X-Forwarded-For": "6.6.6.6"}
        )
        assert response.status_code == 200
        seen = response.json()
        assert seen["host"] == "hello.localhost"
        assert seen["path"] == "/p?q=1"
        assert seen["proto"] == "https"
        assert seen["xhost"] == "hello.localhost"
        assert seen["xff"] == ["127.0.0.1"]  # replaced, not appended to the client's

        assert https_get(front.https_port, "deep.x.apps.test").json()["server"] == "m1"

        missing = https_get(front.https_port, "nobody.localhost")
        assert missing.status_code == 404
        assert "no app is deployed at this domain" in missing.text

        idle = https_get(front.https_port, "idle.localhost")
        assert idle.status_code == 503
        assert "app has no healthy instance" in idle.text

        redirect = httpx.get(
            f"http://127.0.0.1:{front.http_port}/a/b?c=d",
            headers={"Host": f"Hello.localhost:{front.http_port}"},
            timeout=5,
        )
        assert redirect.status_code == 301
        assert redirect.headers["location"] == f"https://hello.localhost:{front.https_port}/a/b?c=d"


def test_tls_offers_h2_refuses_old_versions_and_uses_our_cert(front: Front) -> None:
    assert front.apply(table(1)).applied

    context = ssl.create_default_context(cafile=str(front.cert))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", front.https_port), timeout=5) as raw,
        # *.localhost is in the certificate too, but OpenSSL refuses one-label wildcards.
        context.wrap_socket(raw, server_hostname="hello.paas.test") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    with contextlib.suppress(ValueError, ssl.SSLError), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        socket.create_connection(("127.0.0.1", front.https_port), timeout=5) as raw,
        old.wrap_socket(raw, server_hostname="hello.localhost"),
    ):
        pass


def test_routing_change_is_a_seamless_reload(front: Front) -> None:
    with echo_server("m1") as first, echo_server("m2") as second:
        assert front.apply(table(1, ("hello", ["hello.localhost"], [first]))).applied
        failures: list[str] = []
        served = 0
        stop = threading.Event()

        def hammer() -> None:
            nonlocal served
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    response = https_get(front.https_port, "hello.localhost")
                    if response.status_code != 200:
                        failures.append(f"status {response.status_code}: {response.text[:80]}")
                    served += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            pids = set()
            for index, ports in enumerate(
                [[first, second], [second], [first], [first, second], [second]], start=2
            ):
                result = front.apply(table(index, ("hello", ["hello.localhost"], ports)))
                assert result.applied, result.error
                pids.add(front.process.pid)
                time.sleep(0.2)
        finally:
            stop.set()
            worker.join(timeout=30)
        assert failures == []
        assert served > 5
        assert len(pids) == 1  # the same master: reloaded, never restarted
        assert https_get(front.https_port, "hello.localhost").json()["server"] == "m2"


def test_unchanged_table_does_not_reload(front: Front) -> None:
    assert front.apply(table(1)).applied
    again = front.apply(table(1))
    assert again.applied and not again.changed


def test_broken_template_is_refused_and_last_good_keeps_serving(
    front: Front, tmp_path: Path
) -> None:
    with echo_server("m1") as port:
        assert front.apply(table(1, ("hello", ["hello.localhost"], [port]))).applied
        live_before = (front.applier.live_dir / MAIN_FILE).read_text()

        broken = tmp_path / "operator-templates"
        broken.mkdir()
        text = (default_template_dir() / "haproxy.cfg.j2").read_text()
        (broken / "haproxy.cfg.j2").write_text(
            text.replace(
                "    balance roundrobin\n", "    balance roundrobin\n    bogus-keyword on\n"
            )
        )
        front.template_dir = broken
        result = front.apply(table(2, ("hello", ["hello.localhost", "hi.localhost"], [port])))
        assert result.changed and not result.applied
        assert result.error is not None
        assert "bogus-keyword" in result.error  # HAProxy's message or the quoted line
        assert "| " in result.error  # the offending lines are quoted

        assert (front.applier.live_dir / MAIN_FILE).read_text() == live_before
        assert https_get(front.https_port, "hello.localhost").status_code == 200
        assert https_get(front.https_port, "hi.localhost").status_code == 404


def test_dead_haproxy_is_started_again_by_reload(front: Front) -> None:
    assert front.apply(table(1)).applied
    pid = front.process.pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while front.process.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not front.process.running()
    with echo_server("m1") as port:
        assert front.apply(table(2, ("hello", ["hello.localhost"], [port]))).applied
        assert front.process.pid != pid
        assert https_get(front.https_port, "hello.localhost").status_code == 200


# ---- the whole agent against a fake registry ----------------------------------------------


async def wait_for(predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_frontend_agent_end_to_end(tmp_path: Path) -> None:
    operator = tmp_path / "templates"
    operator.mkdir()
    good_template = (default_template_dir() / "haproxy.cfg.j2").read_text()
    (operator / "haproxy.cfg.j2").write_text(good_template)
    settings = frontend_settings(
        tmp_path / "state",
        template_dir=operator,
        heartbeat_interval_s=0.3,
        watch_wait_s=2.0,
        domain="paas.test",
    )
    https_port = settings.https_port
    registry = FakeRegistry()
    agent = FrontendAgent(settings, transport=httpx.MockTransport(registry.handle))

    def last_report() -> dict[str, object]:
        return registry.last_report()

    async def get(host: str) -> httpx.Response:
        return await asyncio.to_thread(https_get, https_port, host)

    async def scenario(port: int) -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            await wait_for(lambda: last_report().get("applied_index") == 1, "index 1 applied")
            assert (await get("hello.localhost")).status_code == 404

            registry.publish(table(2, ("hello", ["hello.localhost"], [port])))
            await wait_for(lambda: last_report().get("applied_index") == 2, "index 2 applied")
            response = await get("hello.localhost")
            assert response.status_code == 200 and response.json()["server"] == "m1"
            assert last_report()["proxy_error"] is None

            # An operator template HAProxy refuses: reported, last good config keeps serving.
            (operator / "haproxy.cfg.j2").write_text(
                good_template.replace("    mode http\n", "    mode http\n    nonsense here\n")
            )
            registry.publish(table(3, ("hello", ["hello.localhost", "hi.localhost"], [port])))
            await wait_for(lambda: last_report().get("proxy_error"), "proxy error reported")
            assert last_report()["applied_index"] == 2
            assert "nonsense" in str(last_report()["proxy_error"])
            assert (await get("hello.localhost")).status_code == 200
            assert (await get("hi.localhost")).status_code == 404

            # Fixed template + next change: applied, error cleared.
            (operator / "haproxy.cfg.j2").write_text(good_template)
            registry.publish(table(4, ("hello", ["hello.localhost", "hi.localhost"], [port])))
            await wait_for(lambda: last_report().get("applied_index") == 4, "index 4 applied")
            assert last_report()["proxy_error"] is None
            assert (await get("hi.localhost")).status_code == 200

            # HAProxy dies: the heartbeat starts it again on the last good config.
            pid = agent.process.pid
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)
            await wait_for(
                lambda: agent.process.pid not in (None, pid) and agent.process.running(),
                "HAProxy restarted",
            )
            await wait_for(lambda: _serves(https_port), "serving again")
        finally:
            pid = agent.process.pid
            stop.set()
            try:
                await asyncio.wait_for(runner, timeout=30)
            finally:
                force_kill(pid)
        assert not agent.process.running()
        assert registry.joins == 1
        assert (settings.state_dir / "host-token").read_text() == "host-secret"

    with echo_server("m1") as port:
        asyncio.run(scenario(port))


def _serves(port: int) -> bool:
    try:
        return https_get(port, "hello.localhost").status_code == 200
    except httpx.HTTPError:
        return False


def test_agent_restart_adopts_the_running_haproxy(front: Front) -> None:
    with echo_server("m1") as port:
        assert front.apply(table(1, ("hello", ["hello.localhost"], [port]))).applied
        pid = front.process.pid
        # A new agent process (same state dir) finds the master through the pid file.
        again = HaproxyProcess(
            binary="haproxy",
            config=front.process.config,
            pid_file=front.process.pid_file,
            master_socket=front.process.master_socket,
            log_file=front.process.log_file,
        )
        try:
            assert again.adopt_or_clean()
            assert again.pid == pid and again.running()
            again.reload()  # SIGUSR2 to the adopted master, confirmed on its socket
            assert again.pid == pid
            assert https_get(front.https_port, "hello.localhost").status_code == 200
        finally:
            again.stop(grace_s=2)
        assert not again.running()


def test_registry_outage_keeps_serving_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = frontend_settings(
        tmp_path / "state",
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

    agent = FrontendAgent(settings, transport=httpx.MockTransport(handler))

    async def scenario(port: int) -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        try:
            registry.publish(table(2, ("hello", ["hello.localhost"], [port])))
            await wait_for(lambda: agent.applied_index == 2, "index 2 applied")
            caplog.clear()
            down.set()
            registry.changed.set()  # end the pending watch so the next call hits the outage
            await asyncio.sleep(3.0)
            assert await asyncio.to_thread(_serves, https_port)
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            watch = "registry unreachable, HAProxy keeps serving the last good config"
            assert len([w for w in warnings if w.startswith(watch)]) == 1, warnings
            report = "could not report to the registry"
            assert len([w for w in warnings if w.startswith(report)]) == 1, warnings
            reports_before = len(registry.reports)
            down.clear()
            registry.publish(table(3, ("hello", ["hello.localhost", "hi.localhost"], [port])))
            await wait_for(lambda: agent.applied_index == 3, "index 3 applied after outage")
            await wait_for(lambda: len(registry.reports) > reports_before, "reports resume")
        finally:
            pid = agent.process.pid
            stop.set()
            try:
                await asyncio.wait_for(runner, timeout=30)
            finally:
                force_kill(pid)

    with echo_server("m1") as port:
        asyncio.run(scenario(port))


def test_new_index_with_same_routes_does_not_reload(front: Front) -> None:
    with echo_server("m1") as port:
        assert front.apply(table(1, ("hello", ["hello.localhost"], [port]))).applied
        result = front.apply(table(9, ("hello", ["hello.localhost"], [port])))
        assert result.applied and not result.changed


def test_socket_dir_moves_deep_state_folders_to_a_short_private_path(tmp_path: Path) -> None:
    from agent.frontend.agent import MAX_SOCKET_PATH, socket_dir

    shallow = Path("/tmp/x")
    assert socket_dir(shallow) == shallow
    deep = tmp_path / ("d" * 120)
    short = socket_dir(deep)
    assert len(str(short / "master.sock")) <= MAX_SOCKET_PATH
    assert short.stat().st_mode & 0o777 == 0o700
    assert socket_dir(deep) == short  # stable across agent restarts
    short.rmdir()
