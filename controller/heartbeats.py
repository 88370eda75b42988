"""The registry's heartbeat watch: a small background task that marks silent hosts down."""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from controller.context import Context
from controller.hostloss import lost_hosts, mark_lost
from controller.queries import now

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


async def heartbeat_tick(ctx: Context) -> None:
    """Mark silent hosts down; first one full TTL of grace after the registry starts, so a
    registry that was itself down does not mistake its own outage for lost hosts."""
    ttl_s = ctx.settings.heartbeat_ttl_s
    await asyncio.sleep(ttl_s)
    interval = tick_interval(ttl_s)
    while True:
        await asyncio.sleep(interval)
        if not ctx.leader.is_leader():  # one replica sweeps (issue 8)
            continue
        try:
            await run_in_threadpool(check_heartbeats, ctx)
        except Exception:
            log.exception("checking host heartbeats failed; will retry")
