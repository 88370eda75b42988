"""The registry's own liveness, against which host loss is judged.

A host is down when the registry did not hear it for a heartbeat TTL, but only if the
registry was able to hear it all that time. After the registry was stalled (its event loop
blocked, the process stopped, its worker threads or connections exhausted, a host's report
failing on the registry's side), just started, or just became the leader, every host gets at
least one full TTL, counted from then, before it may be declared down: what Nomad and Consul do
after a leader election. Without it a registry that froze for longer than the TTL woke up,
saw every heartbeat "late" and moved every instance in the cluster.

`Liveness` is pure (the monotonic clock is passed in); `watchdog` is the task that feeds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

log = logging.getLogger("paas.registry")


def watchdog_tick(ttl_s: float) -> float:
    """How often the watchdog looks at the clock: at least ten looks per TTL, at most 2/s."""
    return min(0.5, max(0.02, ttl_s / 10))


def stall_threshold(ttl_s: float) -> float:
    """A gap between two looks longer than this is a stall (a few ticks; at most half a TTL,
    so that a stall long enough to matter is always seen, and at most 2 s)."""
    return max(3 * watchdog_tick(ttl_s), min(2.0, ttl_s / 2))


@dataclass
class Liveness:
    """Since when (monotonic seconds) the registry has been able to hear its hosts."""

    started: float
    stall_s: float
    heard_since: float = 0.0
    last_look: float = 0.0

    def __post_init__(self) -> None:
        self.heard_since = self.last_look = self.started

    def look(self, now: float) -> bool:
        """One look at the clock; True when the gap since the last look was a stall."""
        gap = now - self.last_look
        self.last_look = max(self.last_look, now)
        if gap > self.stall_s:
            self.heard_since = max(self.heard_since, now)
            return True
        return False

    def impaired(self, now: float) -> None:
        """Hosts may not have got through just now (a stall of another kind)."""
        self.heard_since = max(self.heard_since, now)

    def may_judge(self, now: float, ttl_s: float) -> bool:
        """May silent hosts be declared down now? Only after one TTL of hearing, and only
        if the registry is not stalled at this very moment (the last look is recent)."""
        if self.look(now):
            return False
        return now - self.heard_since >= ttl_s


def new_liveness(ttl_s: float, *, now: float | None = None) -> Liveness:
    return Liveness(
        started=time.monotonic() if now is None else now, stall_s=stall_threshold(ttl_s)
    )


def look(liveness: Liveness, now: float, ttl_s: float) -> bool:
    """`liveness.look(now)`, and one log line when it saw a stall."""
    gap = now - liveness.last_look
    if not liveness.look(now):
        return False
    log.warning(
        "the registry was stalled for %.1f s (its event loop did not run): every host gets"
        " one heartbeat TTL (%.1f s) before it may be marked down",
        gap,
        ttl_s,
    )
    return True


async def watchdog(
    liveness: Liveness, ttl_s: float, *, clock: Callable[[], float] = time.monotonic
) -> None:
    """Look at the clock every tick; also time one trip through the worker threads (where
    reports and the heartbeat sweep run): a slow trip means hosts could not be heard."""
    tick = watchdog_tick(ttl_s)
    while True:
        await asyncio.sleep(tick)
        look(liveness, clock(), ttl_s)
        sent = clock()
        await run_in_threadpool(_noop)
        now = clock()
        if now - sent > liveness.stall_s:
            liveness.impaired(now)
            log.warning(
                "the registry's worker threads were busy for %.1f s: every host gets one"
                " heartbeat TTL before it may be marked down",
                now - sent,
            )
        liveness.look(now)


def _noop() -> None:
    return None
