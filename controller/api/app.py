"""`create_app(settings)`: the registry's FastAPI application, built on demand, not at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from common.names import InvalidName
from controller.acme.service import AcmeRunner, acme_loop
from controller.api import audit, metrics, status
from controller.api.queries import expire_if_due
from controller.api.request_limits import RequestLimits, RequestLimitsMiddleware
from controller.api.routes import apps as routes_apps
from controller.api.routes import artifacts as routes_artifacts
from controller.api.routes import certs as routes_certs
from controller.api.routes import config as routes_config
from controller.api.routes import data as routes_data
from controller.api.routes import domains as routes_domains
from controller.api.routes import hosts as routes_hosts
from controller.api.routes import logs as routes_logs
from controller.api.routes import routing as routes_routing
from controller.api.routes import run as routes_run
from controller.api.routes import tokens as routes_tokens
from controller.context import Context, build_context
from controller.errors import RegistryError
from controller.settings import RegistrySettings
from controller.store.artifact_gc import artifact_gc_loop
from controller.sync.heartbeats import heartbeat_tick
from controller.sync.liveness import new_liveness, watchdog

log = logging.getLogger("paas.registry")

# Also ends the health window of deploys (paas.toml min_healthy_s): keep it short.
DEADLINE_TICK_S = 0.5


def create_app(settings: RegistrySettings) -> FastAPI:
    ctx = build_context(settings)  # database, notifier, artifact store, leader
    acme_runner = AcmeRunner(ctx)  # issues and renews ACME certificates
    ttl_s = settings.heartbeat_ttl_s
    liveness = new_liveness(ttl_s)  # host loss is judged against it

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.start()
        liveness.impaired(time.monotonic())  # (re)started: every host gets one TTL of grace
        tasks = [
            asyncio.create_task(_deadline_tick(ctx)),
            asyncio.create_task(watchdog(liveness, ttl_s), name="watchdog"),
            asyncio.create_task(heartbeat_tick(ctx, liveness), name="heartbeats"),
        ]
        tasks.append(asyncio.create_task(acme_loop(ctx, acme_runner), name="acme"))
        tasks.append(asyncio.create_task(artifact_gc_loop(ctx), name="artifact-gc"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            ctx.stop()

    app = FastAPI(
        title="paas registry",
        version="1",
        lifespan=lifespan,
        description="The one source of truth: apps, releases, artifacts, hosts, instances.",
    )
    app.state.ctx = ctx
    app.state.acme = acme_runner
    app.state.liveness = liveness
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
    # Operations: tokens, audit log, logs, one-off runs, status page, /metrics.
    app.include_router(routes_tokens.router)
    app.include_router(audit.router)
    app.include_router(routes_logs.router)
    app.include_router(routes_run.router)
    app.include_router(routes_data.router)
    app.include_router(status.router)
    status.redact_access_log()
    app.add_route("/metrics", metrics.metrics_endpoint, methods=["GET"], include_in_schema=False)
    # Outermost first on the way in: metrics (counts refusals too), the edge's request
    # limits (auth, rate, body size; before any body is read), then the audit log.
    app.add_middleware(audit.AuditMiddleware, ctx=ctx)
    app.add_middleware(
        RequestLimitsMiddleware,
        ctx=ctx,
        limits=request_limits(settings),
        on_report_failed=lambda: liveness.impaired(time.monotonic()),
    )
    app.add_middleware(metrics.MetricsMiddleware)
    return app


def request_limits(settings: RegistrySettings) -> RequestLimits:
    return RequestLimits(
        max_json_bytes=settings.max_json_bytes,
        max_artifact_bytes=settings.max_artifact_bytes,
        body_idle_timeout_s=settings.body_idle_timeout_s,
        token_rate_per_s=settings.token_rate_per_s,
        token_burst=settings.token_burst,
        max_uploads_per_token=settings.max_uploads_per_token,
        max_uploads=settings.max_uploads,
    )


async def _deadline_tick(ctx: Context) -> None:
    """Fail overdue deploys even when nobody reads or reports (watchers then wake)."""
    while True:
        await asyncio.sleep(DEADLINE_TICK_S)
        if not ctx.leader.is_leader():  # one replica decides
            continue
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
