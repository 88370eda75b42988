"""The machine proxy against the real nginx: render, validate, apply, route by Host, refuse bad."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from agent.proxy.config_apply import ConfigApplier
from agent.proxy.nginx import view as nginx
from agent.proxy.nginx.process import NginxProcess
from agent.proxy.render import default_template_dir, make_environment
from common.wire import DesiredInstance
from tests.support.proxies import running_nginx, web_instance


def _backend(name: str) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = {"name": name, "headers": dict(self.headers)}
            if self.path == "/big":
                payload["blob"] = "x" * (8 << 20)  # more than nginx buffers in memory
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            size = int(self.headers["Content-Length"])
            received = len(self.rfile.read(size))
            body = json.dumps({"name": name, "received": received}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _inst(iid: int, app: str) -> DesiredInstance:
    return web_instance(iid, app, domains=[f"{app}.paas.test", f"*.{app}.example.com"])


@pytest.fixture
def backends() -> Iterator[dict[str, int]]:
    servers = [_backend("alpha"), _backend("beta")]
    try:
        yield {"alpha": servers[0][1], "beta": servers[1][1]}
    finally:
        for server, _ in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[NginxProcess, ConfigApplier, int]]:
    with running_nginx(tmp_path) as live:
        yield live


def _get(port: int, host: str, **headers: str) -> httpx.Response:
    return httpx.get(
        f"http://127.0.0.1:{port}/", headers={"Host": host, **headers}, timeout=5, trust_env=False
    )


def _wait_for(predicate, *, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_routes_by_host_and_keeps_last_good_on_bad_template(
    tmp_path: Path, backends: dict[str, int], proxy: tuple[NginxProcess, ConfigApplier, int]
) -> None:
    process, applier, port = proxy
    env = make_environment([default_template_dir()])
    view = nginx.build_view(
        [_inst(1, "alpha"), _inst(2, "beta")],
        {1: backends["alpha"], 2: backends["beta"]},
        address="127.0.0.1",
        port=port,
        paths=process.paths(),
        worker_user=process.worker_user,
    )
    result = applier.apply(nginx.render_files(env, view))
    assert result.applied, result.error
    assert process.running

    alpha = _get(port, "alpha.paas.test")
    assert alpha.status_code == 200
    assert alpha.json()["name"] == "alpha"
    seen = alpha.json()["headers"]
    assert seen["Host"] == "alpha.paas.test"
    assert seen["X-Forwarded-Proto"] == "http"
    assert len(seen["X-Request-ID"]) == 32
    assert _get(port, "www.beta.example.com").json()["name"] == "beta"
    passed = _get(
        port,
        "beta.paas.test",
        **{"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.18.0.9", "X-Request-ID": "r1"},
    ).json()["headers"]
    assert passed["X-Forwarded-Proto"] == "https"
    assert passed["X-Forwarded-For"] == "198.18.0.9"
    assert passed["X-Request-ID"] == "r1"
    unknown = _get(port, "nobody.example.org")
    assert unknown.status_code == 404
    assert "no app is deployed at this domain" in unknown.text

    # Unchanged text: no write, no reload.
    again = applier.apply(nginx.render_files(env, view))
    assert (again.changed, again.applied) == (False, True)

    # An operator template with a syntax error is refused; the last good config keeps serving.
    broken_dir = tmp_path / "operator-templates"
    broken_dir.mkdir()
    good = (default_template_dir() / nginx.TEMPLATE).read_text()
    (broken_dir / nginx.TEMPLATE).write_text(good.replace("keepalive 32;", "keepalive 32"))
    broken_env = make_environment([broken_dir, default_template_dir()])
    refused = applier.apply(nginx.render_files(broken_env, view))
    assert refused.changed and not refused.applied
    assert refused.error and "nginx" in refused.error
    assert "keepalive 32" in refused.error  # the offending lines are shown
    assert "keepalive 32;" in process.conf.read_text()
    assert _get(port, "alpha.paas.test").json()["name"] == "alpha"

    # Dropping beta from the view: beta's domains now hit the default server.
    only_alpha = nginx.build_view(
        [_inst(1, "alpha")],
        {1: backends["alpha"]},
        address="127.0.0.1",
        port=port,
        paths=process.paths(),
        worker_user=process.worker_user,
    )
    assert applier.apply(nginx.render_files(env, only_alpha)).applied
    _wait_for(lambda: _get(port, "beta.paas.test").status_code == 404)
    assert _get(port, "alpha.paas.test").json()["name"] == "alpha"


def test_nginx_is_restarted_when_it_dies(
    backends: dict[str, int], proxy: tuple[NginxProcess, ConfigApplier, int]
) -> None:
    process, applier, port = proxy
    env = make_environment([default_template_dir()])
    view = nginx.build_view(
        [_inst(1, "alpha")],
        {1: backends["alpha"]},
        address="127.0.0.1",
        port=port,
        paths=process.paths(),
    )
    assert applier.apply(nginx.render_files(env, view)).applied
    first_pid = int(process.pid_file.read_text())  # written before start returns
    os.kill(first_pid, signal.SIGKILL)
    _wait_for(lambda: not process.running)
    assert process.ensure_running()
    assert int(process.pid_file.read_text()) != first_pid
    _wait_for(lambda: _get(port, "alpha.paas.test").status_code == 200)


def test_large_bodies_pass_through_temp_files(
    backends: dict[str, int], proxy: tuple[NginxProcess, ConfigApplier, int]
) -> None:
    """Workers (an unprivileged user when we are root) can write their temp files, even when
    state_dir sits below a folder they cannot enter (pytest's tmp_path is one)."""
    process, applier, port = proxy
    env = make_environment([default_template_dir()])
    view = nginx.build_view(
        [_inst(1, "alpha")],
        {1: backends["alpha"]},
        address="127.0.0.1",
        port=port,
        paths=process.paths(),
        worker_user=process.worker_user,
    )
    assert applier.apply(nginx.render_files(env, view)).applied
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(trust_env=False, timeout=30, headers={"Host": "alpha.paas.test"}) as client:
        big = client.get(f"{url}/big")
        assert big.status_code == 200
        assert len(big.json()["blob"]) == 8 << 20
        upload = client.post(f"{url}/upload", content=b"y" * (5 << 20))
        assert upload.status_code == 200
        assert upload.json()["received"] == 5 << 20
    assert "Permission denied" not in process.error_log.read_text()
