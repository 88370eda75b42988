"""Who the machine nginx serves and which forwarded headers it believes (issue 12 hole 2b,
issue 15 item 4), against the real nginx and HAProxy.

Hosts are simulated with loopback addresses: the client socket is bound to 127.0.0.N, and
nginx listens on 127.0.0.1 (any 127/8 source reaches it), so the source address it sees is
the one the test chose.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from agent.frontend.agent import worker_identity
from agent.frontend.default_cert import ensure_default_cert
from agent.proxy.config_apply import ConfigApplier
from agent.proxy.haproxy import view as haproxy
from agent.proxy.haproxy.process import HaproxyProcess
from agent.proxy.haproxy.runtime import admin_command
from agent.proxy.nginx import view as nginx
from agent.proxy.nginx.process import NginxProcess
from agent.proxy.render import make_environment, template_dirs
from common.wire import DesiredInstance, RouteApp, RouteServer, RoutingTable, ServiceRoute
from tests.conftest import free_port, free_ports
from tests.support.proxies import running_nginx, web_instance

FRONTEND = "127.0.0.5"
MACHINE = "127.0.0.7"
STRANGER = "127.0.0.9"
FORGED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "gopher",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "1",
    "X-Request-ID": "forged-id",
    "X-Real-IP": "6.6.6.6",
    "Forwarded": "for=6.6.6.6;proto=https",
}


# ---- an app that echoes what it got ---------------------------------------------------------


@dataclass
class EchoApp:
    port: int
    seen: list[dict[str, object]] = field(default_factory=list)


@contextlib.contextmanager
def echo_app() -> Iterator[EchoApp]:
    app = EchoApp(port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen = {
                "path": self.path,
                "host": self.headers.get("Host"),
                "xff": self.headers.get_all("X-Forwarded-For"),
                "proto": self.headers.get("X-Forwarded-Proto"),
                "xhost": self.headers.get("X-Forwarded-Host"),
                "xport": self.headers.get("X-Forwarded-Port"),
                "request_id": self.headers.get("X-Request-ID"),
                "user_agent": self.headers.get("User-Agent"),
                "real_ip": self.headers.get("X-Real-IP"),
                "forwarded": self.headers.get("Forwarded"),
            }
            app.seen.append(seen)
            body = json.dumps(seen).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    app.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _inst(iid: int, app: str) -> DesiredInstance:
    return web_instance(iid, app, health_path="/healthz")


@pytest.fixture
def machine_nginx(tmp_path: Path) -> Iterator[tuple[NginxProcess, ConfigApplier, int]]:
    with running_nginx(tmp_path) as live:
        yield live


def get_from(source: str, port: int, host: str, path: str = "/", **headers: str) -> httpx.Response:
    """GET http://127.0.0.1:`port``path` with Host `host` from a socket bound to `source`."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=5, trust_env=False) as client:
        return client.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host, **headers})


# ---- the machine nginx alone ----------------------------------------------------------------


def test_only_frontends_are_served_and_only_their_headers_are_believed(
    machine_nginx: tuple[NginxProcess, ConfigApplier, int],
) -> None:
    process, applier, port = machine_nginx
    service_port = free_port()
    with echo_app() as alpha, echo_app() as beta:
        view = nginx.build_view(
            [_inst(1, "alpha"), _inst(2, "beta")],
            {1: alpha.port, 2: beta.port},
            address="127.0.0.1",
            port=port,
            paths=process.paths(),
            worker_user=process.worker_user,
            # beta is a dependency of other apps: machine proxies forward to it.
            services=[
                ServiceRoute(
                    name="beta",
                    port=service_port,
                    domain="beta.paas.test",
                    servers=[RouteServer(host="m1", address="127.0.0.1", port=port)],
                )
            ],
            frontends=[FRONTEND],
            machines=[MACHINE],
        )
        result = applier.apply(nginx.render_files(make_environment(template_dirs(None)), view))
        assert result.applied, result.error

        # A stranger (a client that bypassed the frontends) gets 403 everywhere, health-check
        # paths and the default server included, and no app is ever asked.
        for host, path in [
            ("alpha.paas.test", "/"),
            ("alpha.paas.test", "/healthz"),
            ("alpha.paas.test", nginx.PROXY_CHECK_PATH),  # HAProxy's check: frontends only
            ("beta.paas.test", "/"),
            ("nobody.paas.test", "/"),
        ]:
            refused = get_from(STRANGER, port, host, path, **FORGED)
            assert refused.status_code == 403, (host, path)
            assert "connect through a frontend" in refused.text
        assert alpha.seen == [] and beta.seen == []

        # The frontend is served; what it forwarded is passed on as it sent it, Host with
        # its port.
        served = get_from(FRONTEND, port, "alpha.paas.test:8443", "/x?y=1", **FORGED)
        assert served.status_code == 200
        assert served.json() == {
            "path": "/x?y=1",
            "host": "alpha.paas.test:8443",
            "xff": ["6.6.6.6"],
            "proto": "gopher",
            "xhost": "evil.example",
            "xport": "1",
            "request_id": "forged-id",
            "user_agent": served.request.headers["User-Agent"],
            "real_ip": None,  # other client-address headers are never passed on
            "forwarded": None,
        }

        # Another machine proxy may reach the app other apps depend on (service traffic),
        # never the others, and its forwarded headers are set from the connection.
        assert get_from(MACHINE, port, "alpha.paas.test", **FORGED).status_code == 403
        peer = get_from(MACHINE, port, "beta.paas.test", **FORGED)
        assert peer.status_code == 200
        seen = peer.json()
        assert seen["xff"] == [MACHINE]
        assert (seen["proto"], seen["xhost"], seen["xport"]) == (
            "http",
            "beta.paas.test",
            str(port),
        )
        assert seen["request_id"] != "forged-id"
        assert (seen["real_ip"], seen["forwarded"]) == (None, None)

        # The service port (apps on this host, untrusted): nothing the client sent about
        # where it came from is passed on.
        via_service = get_from("127.0.0.1", service_port, "whatever", **FORGED)
        assert via_service.status_code == 200
        seen = via_service.json()
        assert seen["host"] == "beta.paas.test"
        assert seen["xff"] == ["127.0.0.1"]
        assert (seen["proto"], seen["xhost"]) == ("http", "beta.paas.test")
        assert seen["xport"] == str(service_port)
        assert seen["request_id"] != "forged-id"
        assert (seen["real_ip"], seen["forwarded"]) == (None, None)

        # The stranger's requests never reached either app.
        assert len(alpha.seen) == 1 and len(beta.seen) == 2


def test_without_a_loopback_frontend_loopback_is_not_trusted(
    machine_nginx: tuple[NginxProcess, ConfigApplier, int],
) -> None:
    """A frontend elsewhere (198.18.0.0/15 here): 127.0.0.1 is only served when it is a
    machine's address, and then as a machine, not a frontend."""
    process, applier, port = machine_nginx
    with echo_app() as alpha:
        view = nginx.build_view(
            [_inst(1, "alpha")],
            {1: alpha.port},
            address="127.0.0.1",
            port=port,
            paths=process.paths(),
            worker_user=process.worker_user,
            frontends=["198.18.0.1"],
            machines=["198.18.0.2"],
        )
        env = make_environment(template_dirs(None))
        assert applier.apply(nginx.render_files(env, view)).applied
        assert get_from("127.0.0.1", port, "alpha.paas.test").status_code == 403
        assert alpha.seen == []


# ---- both proxies ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_through_haproxy_and_nginx_the_app_sees_the_clients_host_and_frontend_headers(
    tmp_path: Path, machine_nginx: tuple[NginxProcess, ConfigApplier, int]
) -> None:
    process, applier, nginx_port = machine_nginx
    http_port, https_port = free_ports(2)
    base = tmp_path / "haproxy"
    front = HaproxyProcess(
        binary="haproxy",
        config=base / "conf" / haproxy.MAIN_FILE,
        pid_file=base / "haproxy.pid",
        master_socket=base / "master.sock",
        log_file=base / "haproxy.log",
    )
    front_applier = ConfigApplier(
        base / "conf", haproxy.MAIN_FILE, validate=front.validate, reload=front.reload
    )
    cert = ensure_default_cert(tmp_path, "paas.test", now=dt.datetime.now(dt.UTC))
    env = make_environment(template_dirs(None))
    try:
        with echo_app() as hello:
            view = nginx.build_view(
                [_inst(1, "hello")],
                {1: hello.port},
                address="127.0.0.1",
                port=nginx_port,
                paths=process.paths(),
                worker_user=process.worker_user,
                frontends=["127.0.0.1"],  # local mode: the frontend is on loopback
                machines=["127.0.0.1"],
            )
            assert applier.apply(nginx.render_files(env, view)).applied
            table = RoutingTable(
                index=1,
                apps=[
                    RouteApp(
                        name="hello",
                        domains=["hello.paas.test"],
                        servers=[RouteServer(host="m1", address="127.0.0.1", port=nginx_port)],
                        health_path="/healthz",
                    )
                ],
            )
            built = haproxy.build_view(
                table,
                bind_address="127.0.0.1",
                http_port=http_port,
                https_port=https_port,
                cert_path=cert,
                admin_socket=base / "admin.sock",
                run_as=worker_identity(),
            )
            result = front_applier.apply(haproxy.render_files(env, built.view))
            assert result.applied, result.error

            host = f"hello.paas.test:{https_port}"
            with httpx.Client(verify=False, timeout=5, trust_env=False) as client:
                answer = client.get(
                    f"https://127.0.0.1:{https_port}/p",
                    headers={"Host": host, **FORGED},
                    extensions={"sni_hostname": "hello.paas.test"},
                )
            assert answer.status_code == 200, answer.text
            seen = answer.json()
            assert seen["host"] == host  # the port survives both proxies (CSRF, links)
            assert seen["xff"] == ["127.0.0.1"]  # the client's value replaced, not appended
            assert seen["proto"] == "https"
            assert seen["xhost"] == host
            assert seen["xport"] == str(https_port)
            assert (seen["real_ip"], seen["forwarded"]) == (None, None)

            # Issue 15 item 1: HAProxy's checks of the machine pass (nginx itself answers the
            # frontend's check with the app's Host) and never reach the app, so a busy
            # single-worker app cannot make the host look dead.
            deadline = time.monotonic() + 10
            while (status := _check_status(base / "admin.sock", "app_hello", "s1")) != (
                "L7OK",
                "200",
            ):
                assert time.monotonic() < deadline, f"HAProxy's check never passed: {status}"
                time.sleep(0.05)
            assert not [s for s in hello.seen if s["user_agent"] == "paas-health/1"]
    finally:
        pid = front.pid
        try:
            front.stop(grace_s=2)
        finally:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


def _check_status(admin_socket: Path, backend: str, server: str) -> tuple[str, str] | None:
    """(check_status, check_code) of one server from HAProxy's `show stat`."""
    text = admin_command(admin_socket, "show stat")
    header, *rows = text.splitlines()
    names = header.removeprefix("# ").split(",")
    for row in rows:
        values = dict(zip(names, row.split(","), strict=False))
        if (values.get("pxname"), values.get("svname")) == (backend, server):
            return values.get("check_status", ""), values.get("check_code", "")
    return None
