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
from controller.api.metrics import method_label
from controller.api.request_limits import RequestLimits, TokenBuckets, UploadSlots
from controller.server.edge import (
    FAIR_HEAD_WAIT_S,
    UNREAD_GRACE_S,
    ConnectionGate,
    ConnectionLimits,
    RefusalLog,
    connection_limits,
)

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


def _gate(
    *, total: int = 10, per_client: int = 5, pending: int = 4, now: list[float] | None = None
) -> tuple[ConnectionGate, list[int], list[float], list[str]]:
    clock = now if now is not None else [100.0]
    overloads: list[float] = []
    gate = ConnectionGate(
        ConnectionLimits(
            header_timeout_s=10,
            max_connections=total,
            max_connections_per_client=per_client,
            max_pending=pending,
        ),
        on_overload=lambda: overloads.append(clock[0]),
        clock=lambda: clock[0],
    )
    return gate, [], overloads, []


def _admit(gate: ConnectionGate, client: str, closed: list[str], name: str) -> int | None:
    return gate.admit(client, lambda: closed.append(name))


def test_a_newcomer_at_the_pending_cap_evicts_the_oldest_pending_connection() -> None:
    now = [100.0]
    gate, _, overloads, closed = _gate(now=now)
    tickets = {}
    for n in range(4):  # four slow sockets from four addresses, a second apart
        tickets[n] = _admit(gate, f"10.0.0.{n}", closed, f"slow{n}")
        now[0] += 1.0
    assert gate.pending == 4 and closed == []
    newcomer = _admit(gate, "10.0.0.99", closed, "legit")
    assert newcomer is not None
    assert closed == ["slow0"]  # the oldest still waiting for its headers
    assert gate.pending == 4 and gate.open == 4
    gate.release(tickets[0])  # its connection_lost afterwards: a no-op
    assert gate.open == 4 and gate.per_client["10.0.0.1"] == 1 and "10.0.0.0" not in gate.per_client
    assert overloads == []  # it had waited 4 s: no host could have been cut


def test_served_connections_are_never_evicted_and_only_then_is_a_newcomer_refused() -> None:
    now = [0.0]
    gate, _, overloads, closed = _gate(total=3, pending=3, now=now)
    served = [_admit(gate, f"10.0.1.{n}", closed, f"served{n}") for n in range(3)]
    for ticket in served:
        assert ticket is not None
        gate.head_arrived(ticket)  # being served, kept alive, or a long-poll watch
    now[0] = 5.0
    assert _admit(gate, "10.0.0.9", closed, "new") is None
    assert closed == [] and overloads == [5.0]  # hosts may really not get through now
    gate.release(served[0])
    assert _admit(gate, "10.0.0.9", closed, "new") is not None


def test_at_the_total_cap_a_pending_connection_makes_room() -> None:
    now = [0.0]
    gate, _, _, closed = _gate(total=3, pending=3, now=now)
    first = _admit(gate, "10.0.1.1", closed, "served")
    assert first is not None
    gate.head_arrived(first)
    _admit(gate, "10.0.0.1", closed, "slow-old")
    now[0] = 2.0
    _admit(gate, "10.0.0.2", closed, "slow-new")
    now[0] = 3.0
    assert _admit(gate, "10.0.0.3", closed, "legit") is not None
    assert closed == ["slow-old"] and gate.open == 3


def test_the_per_address_cap_still_refuses_without_evicting() -> None:
    gate, _, overloads, closed = _gate(per_client=2)
    assert _admit(gate, "10.0.0.1", closed, "a") is not None
    assert _admit(gate, "10.0.0.1", closed, "b") is not None
    assert _admit(gate, "10.0.0.1", closed, "c") is None
    assert closed == [] and overloads == [] and gate.open == 2


def test_evicting_only_seconds_old_slow_sockets_grants_no_grace_but_a_young_one_does() -> None:
    """The host-loss grace is for when hosts could not be heard: dropping sockets that sat
    without a head far longer than any client needs cannot have cut a host's report."""
    now = [0.0]
    gate, _, overloads, closed = _gate(pending=2, now=now)
    _admit(gate, "10.0.0.1", closed, "old")
    _admit(gate, "10.0.0.2", closed, "young")
    now[0] = 3.0
    n1 = _admit(gate, "10.0.0.3", closed, "n1")  # evicts "old" (3 s without a head)
    assert n1 is not None and overloads == []
    gate.bytes_read(n1)  # part of a head
    now[0] += FAIR_HEAD_WAIT_S / 10
    _admit(gate, "10.0.0.4", closed, "n2")  # evicts "young" (3 s)
    _admit(gate, "10.0.0.5", closed, "n3")  # evicts "n1", only just connected
    assert closed == ["old", "young", "n1"]
    assert overloads == [now[0]]  # churn that fast could cut a real client: grace


def test_a_burst_of_unread_connections_is_not_evicted_and_stops_only_at_the_total() -> None:
    """The event loop accepts a burst before it reads any of it: a legitimate head may be
    waiting unread in the kernel, so unread connections are safe for UNREAD_GRACE_S."""
    now = [0.0]
    gate, _, overloads, closed = _gate(total=6, pending=2, now=now)
    tickets = [_admit(gate, f"10.0.0.{n}", closed, f"burst{n}") for n in range(6)]
    assert None not in tickets and closed == [] and gate.pending == 6
    assert _admit(gate, "10.0.0.9", closed, "late") is None  # the total cap: refused
    assert overloads == [0.0]
    slow = tickets[3]
    assert slow is not None
    gate.bytes_read(slow)  # part of a head, then nothing: evictable at once
    now[0] = 0.5
    assert _admit(gate, "10.0.0.9", closed, "late") is not None
    assert closed == ["burst3"]
    now[0] = 0.5 + UNREAD_GRACE_S
    assert _admit(gate, "10.0.0.8", closed, "later") is not None
    # Silent for the whole grace: evictable, oldest first, down to the pending cap.
    assert closed == ["burst3", "burst0", "burst1", "burst2", "burst4", "burst5"]
    assert gate.pending == 2 and gate.open == 2


def test_pending_cap_defaults_to_a_quarter_of_the_total() -> None:
    limits = connection_limits(
        header_timeout_s=5, max_connections=4096, per_client=256, nofile=65536
    )
    assert limits.max_pending == 1024
    told = connection_limits(
        header_timeout_s=5, max_connections=100, per_client=256, nofile=65536, pending=500
    )
    assert told.max_pending == 100 and told.max_connections_per_client == 100


def test_upload_slots_per_token_and_in_total() -> None:
    slots = UploadSlots(per_token=2, total=3)
    assert slots.take(1) is None and slots.take(1) is None
    refused = slots.take(1)
    assert refused is not None and "2 artifact uploads" in refused
    assert slots.take(2) is None
    refused = slots.take(3)
    assert refused is not None and "3 artifact uploads" in refused
    slots.give(1)
    assert slots.take(3) is None


def test_connections_let_in_unread_are_trimmed_to_the_pending_cap_once_read() -> None:
    now = [0.0]
    gate, _, overloads, closed = _gate(total=10, pending=2, now=now)
    tickets = [_admit(gate, f"10.0.0.{n}", closed, f"burst{n}") for n in range(4)]
    assert closed == [] and gate.pending == 4  # a burst, none read yet
    now[0] = 0.2
    for ticket in tickets:  # each turns out to have sent part of a head
        assert ticket is not None
        gate.bytes_read(ticket)
    assert closed == ["burst0", "burst1"] and gate.pending == 2
    assert overloads == []  # each had waited 0.2 s with its bytes read at last
