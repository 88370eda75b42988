"""The release phase as a background task of the request that created the release: the logic
(controller/core/release_phase.py) run on the registry's database, off the event loop."""

from __future__ import annotations

import logging

import httpx
from starlette.concurrency import run_in_threadpool

from controller.context import Context
from controller.core import release_phase
from controller.core.clock import now
from controller.core.release_phase import PhaseResult, PhaseRun
from controller.errors import RegistryError

log = logging.getLogger("paas.registry")


def _prepare(ctx: Context, app: str, version: int) -> PhaseRun | None:
    with ctx.db.read() as session:
        return release_phase.prepare(session, app, version, settings=ctx.settings, now=now())


def _finish(ctx: Context, app: str, version: int, result: PhaseResult, host: str) -> None:
    with ctx.db.write() as session:
        release_phase.finish(session, app, version, result, host, now=now())


def _fail(ctx: Context, app: str, version: int, reason: str) -> None:
    with ctx.db.write() as session:
        release_phase.fail(session, app, version, reason)


async def run_release_phase(ctx: Context, app: str, version: int) -> None:
    """Run the release phase of `app` v`version` and move the release on."""
    try:
        run = await run_in_threadpool(_prepare, ctx, app, version)
        if run is None:
            return
        result = await release_phase.execute(run, app)
    except (RegistryError, httpx.HTTPError, ValueError) as exc:
        log.info("release %s v%d: release phase not run: %s", app, version, exc)
        await run_in_threadpool(_fail, ctx, app, version, str(exc) or type(exc).__name__)
        return
    await run_in_threadpool(_finish, ctx, app, version, result, run.link.host)
