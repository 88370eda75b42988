"""The registry's edge: connection limits and a header-read timeout, before any HTTP work.

uvicorn (h11) bounds the size of a request head (`h11_max_incomplete_event_size`) and closes
idle kept-alive connections (`timeout_keep_alive`), but it has no timer while a request head
is arriving: a client that connects and trickles (or never sends) its headers holds a file
descriptor for ever, and 20,000 of them exhaust the registry's open-file limit.
`guarded_protocol` is uvicorn's own h11 protocol plus three checks:

- a connection over its client address's cap is aborted at once; one arriving when the
  pending connections (no request head yet) or all connections are at their cap evicts the
  oldest pending connection instead (`ConnectionGate`): slow sockets spread over many
  addresses never lock legitimate newcomers out, and never evict a connection being served;
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
from collections import Counter, OrderedDict
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
    max_pending: int  # connections still waiting for their first request head


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


# The gate sees a connection only once its TCP (and TLS) handshake is done, and a real client's
# request head follows in that same flight: milliseconds on any path, whatever the round trip.
# So evicting a connection that waited longer than this for its head cannot cut off a host's
# report (barring a lost packet, which costs one report, not a TTL of them), and the registry
# still hears its hosts: no host-loss grace. Evicting a younger one could: the pending cap is
# overrun faster than clients can send heads, which counts as "hosts may not get through".
FAIR_HEAD_WAIT_S = 0.05
# A connection none of whose bytes the registry has read yet is not evicted before this: in
# a burst the event loop accepts hundreds of connections before it reads any of them, and a
# legitimate head may be sitting unread in the kernel behind them.
UNREAD_GRACE_S = 1.0


@dataclass
class _Conn:
    client: str
    since: float
    close: Callable[[], None]
    pending: bool = True


class ConnectionGate:
    """Open connections in total and per client address, and those still waiting for their
    first request head (pending); shared by every connection. Pure: the clock is passed in.

    A newcomer over its address's cap is refused. A newcomer at the pending cap or the total
    cap evicts the oldest pending connection instead of being refused (what HAProxy and nginx
    defences do): a connection that sent part of a head, or nothing for UNREAD_GRACE_S, is
    the cheapest to drop, and the newcomer may be legitimate. A connection whose head arrived
    (being served, kept alive, a long-poll watch) is never evicted. With nothing evictable a
    newcomer is still let in up to the total cap, and refused only there.
    """

    def __init__(
        self,
        limits: ConnectionLimits,
        *,
        on_overload: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.on_overload = on_overload  # hosts may not have got through just now
        self.clock = clock
        self.per_client: Counter[str] = Counter()
        self.refusals = RefusalLog(clock=clock)
        self._conns: dict[int, _Conn] = {}
        self._unread: OrderedDict[int, None] = OrderedDict()  # pending, no byte read: oldest first
        self._partial: OrderedDict[int, None] = OrderedDict()  # pending, part of a head read
        self._next = 0

    @property
    def open(self) -> int:
        return len(self._conns)

    @property
    def pending(self) -> int:
        return len(self._unread) + len(self._partial)

    def admit(self, client: str, close: Callable[[], None]) -> int | None:
        """A ticket for the new connection, or None (refused; abort it). May call `close` of
        the oldest pending connection(s) first; their tickets are released here."""
        if self.per_client[client] >= self.limits.max_connections_per_client:
            self.refusals.note("over the per-client connection cap")
            return None
        now = self.clock()
        while self.pending >= self.limits.max_pending or self.open >= self.limits.max_connections:
            victim = self._oldest_evictable(now)
            if victim is None:
                if self.open < self.limits.max_connections:
                    break  # over the pending cap for now, never over the total
                self.refusals.note("over the total connection cap (none may be evicted)")
                self._overloaded()
                return None
            self._evict(victim, now)
        self._next += 1
        ticket = self._next
        self._conns[ticket] = _Conn(client, now, close)
        self._unread[ticket] = None
        self.per_client[client] += 1
        return ticket

    def bytes_read(self, ticket: int) -> None:
        """Bytes of the connection were read but its head is not complete. Connections let
        in over the pending cap while unread are evicted now if there is no room for them."""
        if ticket not in self._unread:
            return
        del self._unread[ticket]
        self._partial[ticket] = None
        now = self.clock()
        while self.pending > self.limits.max_pending:
            victim = self._oldest_evictable(now)
            if victim is None:
                break
            self._evict(victim, now)

    def head_arrived(self, ticket: int) -> None:
        """The connection's first request head is in: it is never evicted from now on."""
        conn = self._conns.get(ticket)
        if conn is not None and conn.pending:
            conn.pending = False
            self._forget_pending(ticket)

    def release(self, ticket: int) -> None:
        """The connection is gone (a no-op for one already evicted)."""
        conn = self._conns.pop(ticket, None)
        if conn is None:
            return
        if conn.pending:
            self._forget_pending(ticket)
        self.per_client[conn.client] -= 1
        if self.per_client[conn.client] <= 0:
            del self.per_client[conn.client]

    def _forget_pending(self, ticket: int) -> None:
        if self._unread.pop(ticket, False) is False:
            self._partial.pop(ticket, None)

    def _oldest_evictable(self, now: float) -> int | None:
        partial = next(iter(self._partial), None)
        unread = next(iter(self._unread), None)
        if unread is not None and now - self._conns[unread].since < UNREAD_GRACE_S:
            unread = None
        if partial is None or unread is None:
            return partial if unread is None else unread
        return unread if self._conns[unread].since < self._conns[partial].since else partial

    def _evict(self, ticket: int, now: float) -> None:
        conn = self._conns[ticket]
        self.release(ticket)
        self.refusals.note("evicted: oldest still waiting for its headers")
        if now - conn.since < FAIR_HEAD_WAIT_S:
            self._overloaded()
        conn.close()

    def _overloaded(self) -> None:
        if self.on_overload is not None:
            self.on_overload()


def guarded_protocol(gate: ConnectionGate) -> type[H11Protocol]:
    """uvicorn's h11 protocol class, bound to `gate` (pass it as `uvicorn.run(http=...)`)."""

    class GuardedH11Protocol(H11Protocol):
        _ticket: int | None = None
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if isinstance(peer, tuple) and peer else "unix"
            ticket = gate.admit(client, transport.abort)
            if ticket is None:
                transport.abort()
                return
            self._ticket = ticket
            super().connection_made(transport)
            self._watch_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._ticket is None:
                return  # refused in connection_made: uvicorn never saw it
            gate.release(self._ticket)
            self._ticket = None
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._ticket is not None and self.conn.their_state is h11.IDLE:
                gate.bytes_read(self._ticket)  # part of a head (may evict this very one)
            self._watch_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch_head()

        def _watch_head(self) -> None:
            """Timer on while a request head is (or may be) arriving, off once it is in."""
            waiting_for_head = self.conn.their_state is h11.IDLE
            if not waiting_for_head and self._ticket is not None:
                gate.head_arrived(self._ticket)
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
    *,
    header_timeout_s: float,
    max_connections: int,
    per_client: int,
    nofile: int,
    pending: int | None = None,
) -> ConnectionLimits:
    """The caps in force: the total stays under half the open-file limit, so the registry
    always has descriptors left for its database, its files and its log; pending connections
    (no request head yet) get at most a quarter of the total unless told otherwise, so slow
    sockets never hold the slots that served and kept-alive connections need."""
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
        max_pending=max(1, min(total // 4 if pending is None else pending, total)),
    )
