"""The registry's heartbeat watch: a small background task that marks silent hosts down.

Host loss is judged against the registry's own liveness (controller/sync/liveness.py): a host is
marked down only after the registry could hear it for a whole TTL and did not. After a stall,
a start or a new leadership every host first gets one TTL of grace.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.concurrency import run_in_threadpool

from controller.context import Context
from controller.core.clock import now
from controller.core.hostloss import lost_hosts, mark_lost
from controller.sync.liveness import Liveness, look

log = logging.getLogger("paas.registry")


def tick_interval(ttl_s: float) -> float:
    """Check often enough that a host is marked down within a tenth of the TTL of expiry
    (the check is one cheap read; a lost host's instances move only once it is marked)."""
    return min(1.0, max(0.05, ttl_s / 10))


def check_heartbeats(ctx: Context) -> list[str]:
    """Mark hosts past the TTL down; a cheap read first so most ticks never write."""
    ttl_s = ctx.settings.heartbeat_ttl_s
    moment = now()
    with ctx.db.read() as session:
        if not lost_hosts(session, now=moment, ttl_s=ttl_s):
            return []
    with ctx.db.write() as session:
        return mark_lost(session, now=moment, ttl_s=ttl_s)


async def heartbeat_tick(ctx: Context, liveness: Liveness) -> None:
    """Mark silent hosts down, only while the registry has heard for a TTL (see above)."""
    ttl_s = ctx.settings.heartbeat_ttl_s
    interval = tick_interval(ttl_s)
    was_leader = False
    while True:
        await asyncio.sleep(interval)
        leader = ctx.leader.is_leader()  # one replica sweeps
        if leader and not was_leader:
            liveness.impaired(time.monotonic())
            log.info("leading the heartbeat sweep: every host first gets %.1f s of grace", ttl_s)
        was_leader = leader
        moment = time.monotonic()
        if look(liveness, moment, ttl_s) or not leader or not liveness.may_judge(moment, ttl_s):
            continue
        try:
            await run_in_threadpool(_check_unless_queued, ctx, liveness, time.monotonic())
        except Exception:
            log.exception("checking host heartbeats failed; will retry")


def _check_unless_queued(ctx: Context, liveness: Liveness, queued_at: float) -> list[str]:
    """In a worker thread: a check that waited long for its thread waited alongside the
    hosts' reports (the pool was exhausted), so it grants grace instead of judging."""
    started = time.monotonic()
    if started - queued_at > liveness.stall_s:
        liveness.impaired(started)
        log.warning(
            "the heartbeat sweep waited %.1f s for a thread: grace for every host",
            started - queued_at,
        )
        return []
    return check_heartbeats(ctx)
