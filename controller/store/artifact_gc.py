"""Artifacts no release refers to are removed, after a grace period (issue 15 item 7).

An artifact is uploaded before its release is created, so a fresh one is always unreferenced
for a moment: only artifacts stored (or last asked about, `HEAD`) more than `grace_s` ago are
candidates, and only the leader replica collects. Releases are kept for the app's life, so
what goes is what deleted apps and abandoned uploads left.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from controller.api.context import Context
from controller.store.models import Release

log = logging.getLogger("paas.registry")


def collect_artifacts(ctx: Context, *, grace_s: float, now: float | None = None) -> list[str]:
    """Remove stored artifacts older than the grace period that no release names."""
    cutoff = (time.time() if now is None else now) - grace_s
    candidates = ctx.artifacts.stored_before(cutoff)
    if not candidates:
        return []
    with ctx.db.read() as session:
        referenced = set(session.execute(select(Release.artifact_sha256).distinct()).scalars())
    removed = []
    for sha in candidates:
        if sha in referenced:
            continue
        ctx.artifacts.remove(sha)
        removed.append(sha)
    if removed:
        log.info("removed %d artifact(s) no release refers to", len(removed))
    return removed


async def artifact_gc_loop(ctx: Context) -> None:
    while True:
        await asyncio.sleep(ctx.settings.artifact_gc_interval_s)
        if not ctx.leader.is_leader():
            continue
        try:
            await run_in_threadpool(
                collect_artifacts, ctx, grace_s=ctx.settings.artifact_gc_grace_s
            )
        except Exception:
            log.exception("artifact garbage collection failed; will retry")
