"""`create_app(settings)`: the registry's FastAPI application, built on demand, not at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from common.names import InvalidName
from controller import (
    routes_apps,
    routes_artifacts,
    routes_certs,
    routes_config,
    routes_domains,
    routes_hosts,
    routes_routing,
)
from controller.artifacts import ArtifactStore
from controller.context import Context
from controller.db import Database
from controller.errors import RegistryError
from controller.heartbeats import heartbeat_tick
from controller.queries import expire_if_due
from controller.settings import RegistrySettings
from controller.watch import LocalNotifier

log = logging.getLogger("paas.registry")

DEADLINE_TICK_S = 2.0


def create_app(settings: RegistrySettings) -> FastAPI:
    notifier = LocalNotifier()
    db = Database(settings.db_url, on_commit=notifier.notify)
    db.create_all()
    ctx = Context(
        settings=settings,
        db=db,
        notifier=notifier,
        artifacts=ArtifactStore(settings.artifacts_dir, max_bytes=settings.max_artifact_bytes),
    )
    ctx.artifacts.remove_partial_uploads()  # left by a crash mid-upload; never visible

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_deadline_tick(ctx)), asyncio.create_task(heartbeat_tick(ctx))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            db.dispose()

    app = FastAPI(
        title="paas registry",
        version="1",
        lifespan=lifespan,
        description="The one source of truth: apps, releases, artifacts, hosts, instances.",
    )
    app.state.ctx = ctx
    app.add_exception_handler(RegistryError, _registry_error)  # type: ignore[arg-type]
    app.add_exception_handler(InvalidName, _invalid_name)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _database_error)  # type: ignore[arg-type]

    @app.get("/v1/health", tags=["health"])
    def health() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(routes_apps.router)
    app.include_router(routes_domains.router)
    app.include_router(routes_certs.router)
    app.include_router(routes_routing.router)
    app.include_router(routes_config.router)
    app.include_router(routes_artifacts.router)
    app.include_router(routes_hosts.router)
    return app


async def _deadline_tick(ctx: Context) -> None:
    """Fail overdue deploys even when nobody reads or reports (watchers then wake)."""
    while True:
        await asyncio.sleep(DEADLINE_TICK_S)
        try:
            await run_in_threadpool(expire_if_due, ctx)
        except Exception:
            log.exception("checking deploy deadlines failed; will retry")


def _registry_error(_request: Request, exc: RegistryError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


def _database_error(_request: Request, exc: OperationalError) -> JSONResponse:
    """The transaction was rolled back; a full disk is the one cause a user can act on."""
    if "disk is full" in str(exc.orig).lower():
        log.error("database write refused: no space left (%s)", exc.orig)
        return JSONResponse(
            {"detail": "no space left on the registry's database disk; nothing was changed"},
            status_code=507,
        )
    log.error("database error: %s", exc.orig)
    return JSONResponse(
        {"detail": f"the registry's database failed: {exc.orig}; nothing was changed"},
        status_code=500,
    )


def _invalid_name(_request: Request, exc: InvalidName) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """Pydantic's error list -> one clear sentence naming the field and the rule."""
    parts = [_describe(error) for error in exc.errors()]
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


def _describe(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "path", "query")]
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{'.'.join(loc)}: {message}" if loc else message
