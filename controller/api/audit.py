"""The audit log: every mutating call (who, what, when, result), and `GET /v1/audit`.

Recorded by an ASGI middleware after the answer is sent, from the route template, the path
parameters and the token that was presented; never from the body, so config values,
certificates and keys cannot reach it. Host heartbeats (`POST /v1/hosts/{host}/report`) are
observed state, not changes anyone made, and are left out (one every few seconds per host).
Calls without a known token are not recorded: they changed nothing, and 2,000 of them pushed
every real event off the status page.
"""

from __future__ import annotations

import itertools
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.names import AppName, InvalidName, check_app_name, parse_duration
from common.wire import AuditEntry
from controller.api.auth import PRINCIPAL_KEY, Principal, require_admin
from controller.api.context import get_ctx
from controller.api.metrics import route_template
from controller.context import Context
from controller.store.models import AuditEvent

log = logging.getLogger("paas.registry")

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NOT_AUDITED = frozenset({"/v1/hosts/{host}/report"})
SUMMARY_MAX = 300


def summary_of(scope: Scope) -> str:
    """'create release route' plus the path parameters other than the app (a version, a
    domain, a sha256): all of them validated names, never secrets."""
    route: Any = scope.get("route")
    name = str(getattr(route, "name", "") or "request").removesuffix("_route").replace("_", " ")
    params = {k: _safe(v) for k, v in (scope.get("path_params") or {}).items() if k != "app"}
    extra = " ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{name} {extra}".strip()[:SUMMARY_MAX]


_SAFE_PARAM = re.compile(r"^[A-Za-z0-9._*-]{1,253}$")


def _safe(value: object) -> str:
    """A path parameter as recorded: refused values (a 422) are not stored as given."""
    text = str(value)
    return text if _SAFE_PARAM.fullmatch(text) else "<invalid>"


def _app_of(scope: Scope) -> str | None:
    value = (scope.get("path_params") or {}).get("app")
    try:
        return check_app_name(value) if isinstance(value, str) else None
    except InvalidName:
        return None


PRUNE_EVERY = 500  # writes between deletions of events past `audit_keep_days`
_writes = itertools.count(1)


def record(ctx: Context, event: AuditEvent) -> None:
    with ctx.db.write() as session:
        session.add(event)
        if next(_writes) % PRUNE_EVERY == 0:
            prune(session, keep_days=ctx.settings.audit_keep_days)


def prune(session: Session, *, keep_days: float) -> None:
    cutoff = datetime.now(UTC) - timedelta(days=keep_days)
    session.execute(delete(AuditEvent).where(AuditEvent.at < cutoff))


class AuditMiddleware:
    def __init__(self, app: ASGIApp, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            await self._record(scope, status)

    async def _record(self, scope: Scope, status: int) -> None:
        route = route_template(scope)
        if route in NOT_AUDITED:
            return
        who: Principal | None = scope.get(PRINCIPAL_KEY)
        if who is None:
            return  # unauthenticated: nobody did anything (and floods must not push out events)
        event = AuditEvent(
            at=datetime.now(UTC),
            token_id=who.token_id,
            token_name=who.name or who.host_name,
            scope=who.kind,
            method=scope["method"],
            route=route[:200],
            app=_app_of(scope),
            summary=summary_of(scope),
            status=status,
        )
        try:
            await run_in_threadpool(record, self.ctx, event)
        except Exception:  # the call itself is done; a lost audit row is logged loudly
            log.exception("could not record the audit event for %s %s", scope["method"], route)


router = APIRouter(prefix="/v1", tags=["audit"], dependencies=[Depends(require_admin)])


@router.get("/audit", response_model=list[AuditEntry])
def read_audit(
    app: AppName | None = Query(None),
    since: str | None = Query(None, description="e.g. 1h, 30m, 2d"),
    limit: int = Query(200, ge=1, le=5000),
    ctx: Context = Depends(get_ctx),
) -> list[AuditEntry]:
    """Newest first."""
    return recent(ctx, app=app, since_s=parse_duration(since) if since else None, limit=limit)


def recent(
    ctx: Context, *, app: str | None = None, since_s: int | None = None, limit: int = 200
) -> list[AuditEntry]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if app is not None:
        query = query.where(AuditEvent.app == app)
    if since_s is not None:
        query = query.where(AuditEvent.at >= datetime.now(UTC) - timedelta(seconds=since_s))
    with ctx.db.read() as session:
        rows = session.execute(query).scalars().all()
        return [AuditEntry.model_validate(row, from_attributes=True) for row in rows]
