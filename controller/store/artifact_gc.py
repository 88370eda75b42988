"""Artifacts no release refers to are removed, after a grace period.

An artifact is uploaded before its release is created, so a fresh one is always unreferenced
for a moment: only artifacts stored (or last asked about, `HEAD`) more than `grace_s` ago are
candidates, and only the leader replica collects. Releases are kept for the app's life, so
what goes is what deleted apps and abandoned uploads left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from controller.settings import RegistrySettings
from controller.store.artifacts import ArtifactStore
from controller.store.db import Database
from controller.store.db_artifacts import DbArtifactStore
from controller.store.models import Release

log = logging.getLogger("paas.registry")


class _Leader(Protocol):
    def is_leader(self) -> bool: ...


class GcContext(Protocol):
    """The parts of the registry's Context (controller/api/context.py) collection uses; the
    store layer names them here rather than importing the layers above it."""

    @property
    def settings(self) -> RegistrySettings: ...
    @property
    def db(self) -> Database: ...
    @property
    def artifacts(self) -> ArtifactStore | DbArtifactStore: ...
    @property
    def leader(self) -> _Leader: ...


def collect_artifacts(ctx: GcContext, *, grace_s: float, now: float | None = None) -> list[str]:
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


async def artifact_gc_loop(ctx: GcContext) -> None:
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
