"""Pass-through correctness through both proxies (HAProxy -> nginx -> app) on the shared local
cluster: forwarded headers, a 50 MB upload, server-sent events delivered as they are sent,
WebSocket echo, and the per-app routing options (`paas routing:set`) taking effect."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cli.local import LocalCluster
from tests.e2e.helpers import https_get, logs, paas

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-1")]
APP = "passthrough"
HOST = f"{APP}.localhost"
SOURCE = Path(__file__).parent / "apps" / "passthrough"
SNI = {"sni_hostname": HOST}  # per request: httpx sets SNI from the URL otherwise


def run(cluster: LocalCluster, *args: str) -> str:
    done = paas(cluster, *args)
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    return done.stdout


def client(cluster: LocalCluster, timeout: float = 30) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://127.0.0.1:{cluster.ports.https}",
        headers={"Host": HOST},
        verify=False,
        timeout=timeout,
    )


def eventually(check: Callable[[], bool], cluster: LocalCluster, what: str) -> None:
    """Routing changes reach the proxies through the watches: wait (bounded) for them."""
    deadline = time.monotonic() + 90
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened\n{logs(cluster)}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def deployed(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> LocalCluster:
    app = tmp_path_factory.mktemp("src") / APP
    shutil.copytree(SOURCE, app, ignore=shutil.ignore_patterns("__pycache__"))
    run(cluster, "deploy", str(app), "--timeout", "180")
    return cluster


def ws_connect(cluster: LocalCluster) -> tuple[ssl.SSLSocket, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", cluster.ports.https), timeout=10)
    tls = context.wrap_socket(raw, server_hostname=HOST)
    key = base64.b64encode(os.urandom(16)).decode()
    tls.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = tls.recv(4096)
        if not chunk:
            break
        head += chunk
    return tls, head


def recv_exact(tls: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = tls.recv(size - len(data))
        assert chunk, "connection closed mid-frame"
        data += chunk
    return data


def ws_echo(tls: ssl.SSLSocket, text: bytes) -> bytes:
    """Send one masked text frame, return the payload of the frame that comes back."""
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    size = bytes([0x80 | len(text)]) if len(text) < 126 else b"\xfe" + struct.pack("!H", len(text))
    tls.sendall(b"\x81" + size + mask + payload)
    head = recv_exact(tls, 2)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", recv_exact(tls, 2))[0]
    return recv_exact(tls, length)


def test_forwarded_headers_are_set_consistently(deployed: LocalCluster) -> None:
    with client(deployed) as http:
        seen = http.get(
            "/", headers={"X-Forwarded-For": "6.6.6.6", "X-Request-ID": "req-1"}, extensions=SNI
        )
        plain = http.get("/", extensions=SNI)
    headers = seen.json()["headers"]
    assert headers["Host"] == [HOST]
    assert headers["X-Forwarded-For"] == ["127.0.0.1"]  # set by HAProxy, never appended
    assert headers["X-Forwarded-Proto"] == ["https"]
    assert headers["X-Forwarded-Host"] == [HOST]
    assert headers["X-Request-ID"] == ["req-1"]
    generated = plain.json()["headers"]["X-Request-ID"]
    assert generated and len(generated) == 1 and len(generated[0]) == 32


def test_a_50_mb_upload_arrives_whole(deployed: LocalCluster) -> None:
    body = os.urandom(1 << 20) * 50
    with client(deployed, timeout=120) as http:
        response = http.post("/upload", content=body, extensions=SNI)
    assert response.status_code == 200, response.text
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_server_sent_events_are_not_buffered(deployed: LocalCluster) -> None:
    with client(deployed) as http, http.stream("GET", "/sse", extensions=SNI) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        # The app sends the second event only after /release: seeing the first one now
        # proves neither proxy waits for the whole response.
        assert next(line for line in lines if line) == "data: first"
        with client(deployed) as other:
            assert other.get("/release", extensions=SNI).status_code == 200
        assert next(line for line in lines if line) == "data: second"


def test_websocket_echo_through_both_proxies(deployed: LocalCluster) -> None:
    tls, head = ws_connect(deployed)
    with tls:
        assert head.startswith(b"HTTP/1.1 101"), head
        assert ws_echo(tls, b"hello over two proxies") == b"hello over two proxies"
        assert ws_echo(tls, b"x" * 300) == b"x" * 300


def test_routing_options_take_effect(deployed: LocalCluster) -> None:
    cluster = deployed
    run(cluster, "routing:set", APP, "max_body_mb=1", "websocket=off", "hsts_max_age_s=600")

    def applied() -> bool:
        """Both proxies took the change (each applies it whole, not at the same moment): a
        body over max_body_mb gets 413 and a small one comes back with an HSTS header."""
        with client(cluster) as http:
            too_big = http.post("/upload", content=b"x" * (2 << 20), extensions=SNI)
            small = http.post("/upload", content=b"x" * 1000, extensions=SNI)
        return too_big.status_code == 413 and "strict-transport-security" in small.headers

    eventually(applied, cluster, "413 for a body over max_body_mb, and the HSTS header")
    with client(cluster) as http:
        ok = http.post("/upload", content=b"x" * 1000, extensions=SNI)
    assert ok.status_code == 200
    assert ok.headers["strict-transport-security"] == "max-age=600"
    tls, head = ws_connect(cluster)
    with tls:
        assert head.startswith(b"HTTP/1.1 400"), head  # the app never saw the Upgrade

    run(cluster, "routing:set", APP, "maintenance=on", "https_redirect=off")
    eventually(
        lambda: "down for maintenance" in https_get(cluster, HOST).text, cluster, "maintenance"
    )
    run(cluster, "routing:set", APP, "maintenance=off")

    def plain_http_served() -> bool:
        with httpx.Client(timeout=10) as http:
            response = http.get(f"http://127.0.0.1:{cluster.ports.http}/", headers={"Host": HOST})
        return response.status_code == 200 and response.json()["headers"]["X-Forwarded-Proto"] == [
            "http"
        ]

    eventually(plain_http_served, cluster, "plain HTTP with https_redirect=off")
    with httpx.Client(timeout=10) as http:  # other apps still get the redirect
        other = http.get(f"http://127.0.0.1:{cluster.ports.http}/", headers={"Host": "x.localhost"})
    assert other.status_code == 301
    out = run(cluster, "routing", APP)
    assert "max_body_mb      1" in out and "websocket        off" in out
    run(cluster, "apps:delete", APP, "--yes")
