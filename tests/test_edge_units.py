"""Issue 14: the pure pieces of the registry's edge, and `paas logs` against a log stream
that carries terminal escape sequences (the real CLI, a real HTTP server)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cli.logs import escape_controls
from controller.edge import RefusalLog, connection_limits
from controller.metrics import method_label
from controller.request_limits import RequestLimits, TokenBuckets

BIN = Path(sys.executable).parent


def test_refusals_are_logged_one_line_per_many(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = RefusalLog(every=1000, interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="paas.registry"):
        for n in range(20_000):
            now[0] = n * 0.0001  # 20,000 refusals in 2 s
            refusals.note("over the per-client connection cap")
    lines = [r.getMessage() for r in caplog.records]
    assert 1 <= len(lines) <= 21, len(lines)  # the first, then one per 1,000
    assert refusals.total["over the per-client connection cap"] == 20_000
    assert "1000 over the per-client connection cap" in lines[1]


def test_the_total_cap_stays_under_half_the_open_file_limit() -> None:
    limits = connection_limits(
        header_timeout_s=5, max_connections=4096, per_client=256, nofile=1024
    )
    assert limits.max_connections == 512 and limits.max_connections_per_client == 256
    roomy = connection_limits(
        header_timeout_s=5, max_connections=4096, per_client=256, nofile=65536
    )
    assert roomy.max_connections == 4096


def test_token_buckets_are_per_token_and_refill() -> None:
    buckets = TokenBuckets(rate_per_s=10, burst=5)
    assert [buckets.take(1, 0.0) for _ in range(5)] == [0.0] * 5
    assert buckets.take(1, 0.0) == pytest.approx(0.1)  # empty: one unit in 0.1 s
    assert buckets.take(2, 0.0) == 0.0  # another token is untouched
    assert buckets.take(1, 0.1) == 0.0  # refilled


def test_body_limits_by_route() -> None:
    limits = RequestLimits(
        max_json_bytes=1024,
        max_artifact_bytes=10**6,
        body_idle_timeout_s=30,
        token_rate_per_s=1,
        token_burst=1,
    )
    assert limits.body_limit("POST", "/v1/apps") == 1024
    assert limits.body_limit("PUT", "/v1/artifacts/" + "a" * 64) > 10**6
    assert limits.body_limit("POST", "/v1/artifacts/" + "a" * 64) == 1024
    assert limits.body_limit("PUT", "/v1/artifacts/x/y") == 1024


def test_method_labels_are_a_fixed_set() -> None:
    assert [method_label(m) for m in ("GET", "DELETE", "get", "X1", "PROPFIND")] == [
        "GET",
        "DELETE",
        "other",
        "other",
        "other",
    ]


HOSTILE = (
    "ok \x1b]52;c;cm0gLXJmIH4K\x07"  # OSC 52: write the operator's clipboard
    "\x1b]0;owned\x1b\\"  # OSC 0: the window title
    "\x1b[2J\x1b[H"  # CSI: clear the screen
    "\x9b31m\x9d2;t\x9c"  # C1 CSI / OSC / ST on their own
    "\rfake\x08\x7f\tend"
)


def test_control_sequences_are_escaped() -> None:
    shown = escape_controls(HOSTILE)
    assert not any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) <= 0x9F for c in shown)
    assert shown.startswith("ok \\x1b]52;c;cm0gLXJmIH4K\\x07")
    assert "\t" in shown and "\\x9b31m" in shown and "\\x0dfake" in shown


@pytest.fixture
def log_stream() -> Iterator[str]:
    """A registry stand-in that streams one hostile log line, as NDJSON over real HTTP."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            item = {"time": "t", "app": "web", "instance": 1, "host": "m1", "line": HOSTILE}
            body = (json.dumps(item) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_paas_logs_never_passes_escape_sequences_to_the_terminal(log_stream: str) -> None:
    env = {**os.environ, "PAAS_REGISTRY_URL": log_stream, "PAAS_TOKEN": "t"}

    def logs(*extra: str) -> bytes:
        done = subprocess.run(
            [str(BIN / "paas"), "logs", "web", *extra], capture_output=True, env=env, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    shown = logs()
    assert b"\x1b" not in shown and b"\x07" not in shown and b"\r" not in shown
    assert "\x9b".encode() not in shown and "\x9d".encode() not in shown
    assert b"\\x1b]52;c;cm0gLXJmIH4K\\x07" in shown
    assert b"\x1b]52;" in logs("--raw")  # asked for: passed through as sent
