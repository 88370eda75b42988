"""A service port an app squats cannot take the machine proxy down (issue 12 hole 3b).

A real process of another uid listens on the service port nginx is about to take. The
machine proxy leaves that one listener out, the reload succeeds, the other apps keep
answering without a failed request, the conflict is reported with the port, the app and the
squatter's pid and uid, and once the squatter is gone the next apply brings the listener back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from agent.machine.instances import Instance
from agent.machine.proxy import MachineProxy
from agent.proxy.nginx import service_ports
from agent.proxy.nginx import view as nginx
from agent.proxy.render import make_environment, template_dirs
from agent.settings import AgentSettings
from common.registry_tls import no_tls
from common.wire import DesiredInstance, DesiredState, RouteServer, ServiceRoute
from tests.conftest import free_ports
from tests.support.proxies import web_instance

NOBODY = 65534
SQUATTER = """
import socket, sys, time
sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
print("listening", flush=True)
while True:
    conn, _ = sock.accept()
    conn.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nstolen")
    conn.close()
"""


@contextlib.contextmanager
def app_server(name: str) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"app": name}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def squatter(port: int) -> Iterator[subprocess.Popen[str]]:
    """A process of uid nobody listening on 127.0.0.1:`port`."""
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-c", SQUATTER, str(port)],
        user=NOBODY,
        group=NOBODY,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


class Requests:
    """GETs in a thread, one fresh connection each, until stopped; every non-200 counts."""

    def __init__(self, targets: list[tuple[str, str]]) -> None:
        self.targets = targets  # (url, Host)
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Requests:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        plain = no_tls()  # http:// only: no CA bundle loaded for every request's client
        while not self._stop.is_set():
            for url, host in self.targets:
                self.sent += 1
                try:
                    with httpx.Client(timeout=5, trust_env=False, verify=plain) as client:
                        response = client.get(url, headers={"Host": host})
                    if response.status_code != 200:
                        self.failures.append(f"{url} {host}: {response.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{url} {host}: {exc!r}")
            self._stop.wait(0.01)


def _wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _inst(iid: int, app: str) -> DesiredInstance:
    return web_instance(iid, app)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[MachineProxy]:
    (proxy_port,) = free_ports(1)
    settings = AgentSettings(
        role="machine",
        registry_url="http://127.0.0.1:9",
        join_token="join-secret",
        name="m1",
        state_dir=tmp_path / "state",
        proxy_port=proxy_port,
    )
    machine = MachineProxy(settings, make_environment(template_dirs(None)))
    try:
        yield machine
    finally:
        machine.stop(grace_s=5.0)


def test_a_squatted_service_port_is_left_out_reported_and_taken_back(
    proxy: MachineProxy,
) -> None:
    port = proxy.settings.proxy_port
    alpha_service, beta_service = free_ports(2)

    def desired(*services: ServiceRoute) -> DesiredState:
        return DesiredState(
            index=1,
            host="m1",
            instances=[],
            services=list(services),
            frontends=["127.0.0.1"],
            machines=["127.0.0.1"],
        )

    def route(name: str, service_port: int) -> ServiceRoute:
        return ServiceRoute(
            name=name,
            port=service_port,
            domain=f"{name}.paas.test",
            servers=[RouteServer(host="m1", address="127.0.0.1", port=port)],
        )

    with app_server("alpha") as alpha, app_server("beta") as beta, app_server("gamma") as gamma:
        instances = {
            1: Instance(desired=_inst(1, "alpha"), phase="running", port=alpha),
            2: Instance(desired=_inst(2, "beta"), phase="running", port=beta),
        }
        proxy.follow(desired(route("beta", beta_service)))
        assert asyncio.run(proxy.apply(instances, index=1))
        assert proxy.error is None, proxy.error
        public = f"http://127.0.0.1:{port}/"
        targets = [
            (public, "alpha.paas.test"),
            (public, "beta.paas.test"),
            (f"http://127.0.0.1:{beta_service}/", "x"),
        ]

        with squatter(alpha_service) as squat:
            # The hole: a config that listens on the squatted port does not go live (nginx
            # cannot bind it), whatever else it would have changed.
            naive = nginx.build_view(
                [i.desired for i in instances.values()],
                {1: alpha, 2: beta},
                address="127.0.0.1",
                port=port,
                paths=proxy.process.paths(),
                worker_user=proxy.process.worker_user,
                services=[route("alpha", alpha_service), route("beta", beta_service)],
                frontends=["127.0.0.1"],
            )
            refused = proxy.applier.apply(nginx.render_files(proxy.templates, naive))
            assert not refused.applied and refused.error

            with Requests(targets) as load:
                _wait_until(lambda: load.sent >= 30)
                # alpha becomes a dependency (its service port is now wanted, and taken) in the
                # same desired state that places a new app, gamma, here.
                proxy.follow(desired(route("alpha", alpha_service), route("beta", beta_service)))
                instances[3] = Instance(desired=_inst(3, "gamma"), phase="running", port=gamma)
                started = time.monotonic()
                assert asyncio.run(proxy.apply(instances, index=2))  # the report changes
                apply_s = time.monotonic() - started
                assert proxy.applied_index == 2  # the rest of the config went live: gamma
                assert proxy.routed == {1, 2, 3}
                answer = httpx.get(public, headers={"Host": "gamma.paas.test"}, trust_env=False)
                assert answer.json() == {"app": "gamma"}
                error = proxy.error or ""
                assert f"service port {alpha_service} of app alpha" in error
                assert f"pid {squat.pid} (uid {NOBODY}" in error
                assert "left out until the port is free" in error
                assert f":{alpha_service}" not in proxy.process.conf.read_text()
                # A second pass while it is still taken changes nothing and reloads nothing.
                assert not asyncio.run(proxy.apply(instances, index=2))
                after = load.sent
                _wait_until(lambda: load.sent >= after + 60)  # well past the reload
            assert load.failures == [], load.failures[:5]

        # The squatter is gone: the next pass takes the port and serves alpha on it.
        assert service_ports.is_free(alpha_service)
        assert asyncio.run(proxy.apply(instances, index=2))
        assert proxy.error is None, proxy.error
        answer = httpx.get(f"http://127.0.0.1:{alpha_service}/", trust_env=False, timeout=5)
        assert answer.json() == {"app": "alpha"}
        assert f"127.0.0.1:{alpha_service};" in proxy.process.conf.read_text()
    print(f"apply with a squatted port took {apply_s:.3f}s; {load.sent} requests, 0 failed")


def test_ports_nginx_holds_are_not_conflicts(proxy: MachineProxy) -> None:
    """After an agent restart the live ports are unknown: nginx's own listeners are told
    apart from a squatter's by pid, so adopting a running nginx reports nothing."""
    (service_port,) = free_ports(1)
    route = ServiceRoute(name="beta", port=service_port, domain="beta.paas.test", servers=[])
    proxy.follow(DesiredState(index=1, host="m1", instances=[], services=[route]))
    assert asyncio.run(proxy.apply({}, index=1))
    assert proxy.error is None
    proxy._live_service_ports = frozenset()  # what a restarted agent knows
    assert service_ports.squatters([service_port], ours=proxy._nginx_pids()) == {}
    assert not asyncio.run(proxy.apply({}, index=1))
    assert proxy.error is None
