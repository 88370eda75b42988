"""The registry's edge: connection limits and a header-read timeout, before any HTTP work.

uvicorn (h11) bounds the size of a request head (`h11_max_incomplete_event_size`) and closes
idle kept-alive connections (`timeout_keep_alive`), but it has no timer while a request head
is arriving: a client that connects and trickles (or never sends) its headers holds a file
descriptor for ever, and 20,000 of them exhausted the registry's open-file limit (issue 14).
`guarded_protocol` is uvicorn's own h11 protocol plus three checks:

- a connection over the total cap or over its client address's cap is aborted at once;
- the request line and headers must be complete within `header_timeout_s` of the connection
  (or of the first byte of a later request on a kept-alive connection), else it is closed;
- refusals are logged one line per `LOG_EVERY` refusals (or per `LOG_INTERVAL_S`), never one
  per connection.

Long-poll watches are unaffected: once a request's head is in, the connection is the app's.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("paas.registry")

LOG_EVERY = 1000
LOG_INTERVAL_S = 10.0
NOFILE_TARGET = 65536


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_connections: int
    max_connections_per_client: int


class RefusalLog:
    """Counts refusals by reason; logs the first, then one line per `every` refusals or per
    `interval_s`, whichever comes first, with the counts since the last line."""

    def __init__(
        self,
        *,
        every: int = LOG_EVERY,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every = every
        self.interval_s = interval_s
        self.clock = clock
        self.pending: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        self._last_line: float | None = None

    def note(self, reason: str) -> None:
        self.pending[reason] += 1
        self.total[reason] += 1
        now = self.clock()
        due = self._last_line is None or now - self._last_line >= self.interval_s
        if due or sum(self.pending.values()) >= self.every:
            parts = ", ".join(f"{n} {why}" for why, n in sorted(self.pending.items()))
            log.warning("edge: refused or closed connections: %s", parts)
            self.pending.clear()
            self._last_line = now


class ConnectionGate:
    """Open connections in total and per client address; shared by every connection."""

    def __init__(
        self, limits: ConnectionLimits, *, on_overload: Callable[[], None] | None = None
    ) -> None:
        self.limits = limits
        self.on_overload = on_overload  # the total cap was hit: hosts may not get through
        self.open = 0
        self.per_client: Counter[str] = Counter()
        self.refusals = RefusalLog()

    def admit(self, client: str) -> bool:
        if self.open >= self.limits.max_connections:
            self.refusals.note("over the total connection cap")
            if self.on_overload is not None:
                self.on_overload()
            return False
        if self.per_client[client] >= self.limits.max_connections_per_client:
            self.refusals.note("over the per-client connection cap")
            return False
        self.open += 1
        self.per_client[client] += 1
        return True

    def release(self, client: str) -> None:
        self.open -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


def guarded_protocol(gate: ConnectionGate) -> type[H11Protocol]:
    """uvicorn's h11 protocol class, bound to `gate` (pass it as `uvicorn.run(http=...)`)."""

    class GuardedH11Protocol(H11Protocol):
        _admitted: str | None = None
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if isinstance(peer, tuple) and peer else "unix"
            if not gate.admit(client):
                transport.abort()
                return
            self._admitted = client
            super().connection_made(transport)
            self._watch_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._admitted is None:
                return  # refused in connection_made: uvicorn never saw it
            gate.release(self._admitted)
            self._admitted = None
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch_head()

        def _watch_head(self) -> None:
            """Timer on while a request head is (or may be) arriving, off once it is in."""
            waiting_for_head = self.conn.their_state is h11.IDLE
            if self.transport.is_closing() or not waiting_for_head:
                self._cancel_head_timer()
            elif self._head_timer is None and (
                self.timeout_keep_alive_task is None or self.conn.trailing_data[0]
            ):
                # A fresh connection, or bytes of the next request: the head must follow.
                # (An idle kept-alive connection is uvicorn's keep-alive timer's.)
                self._head_timer = self.loop.call_later(
                    gate.limits.header_timeout_s, self._head_timed_out
                )

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                gate.refusals.note("closed: headers not complete in time")
                self.transport.abort()

    return GuardedH11Protocol


def raise_nofile_limit(target: int = NOFILE_TARGET) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (at most `target`); the soft
    limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


def connection_limits(
    *, header_timeout_s: float, max_connections: int, per_client: int, nofile: int
) -> ConnectionLimits:
    """The caps in force: the total stays under half the open-file limit, so the registry
    always has descriptors left for its database, its files and its log."""
    total = min(max_connections, max(16, nofile // 2))
    if total < max_connections:
        log.warning(
            "edge: at most %d connections (not %d): the open-file limit is %d",
            total,
            max_connections,
            nofile,
        )
    return ConnectionLimits(
        header_timeout_s=header_timeout_s,
        max_connections=total,
        max_connections_per_client=min(per_client, total),
    )
