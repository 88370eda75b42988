"""`GET /status`: a small read-only HTML page of the cluster (apps, releases, instances,
hosts, recent events from the audit log), rendered with Jinja2; no JavaScript.

Protection: an admin token, given either as `Authorization: Bearer <token>` (scripts) or once
as `/status?token=<token>` (the key in any percent-encoded spelling), which answers with a
redirect to `/status` that sets a random session id, never the token, in an HttpOnly,
SameSite=Strict cookie (Secure when the page was reached over HTTPS), so the token is not left
in the address bar, the browser history or the cookie jar; JavaScript on other pages cannot
read the cookie and other sites cannot make the browser send it. Every visit checks the
session's token again, so a revoked token loses the page at once. The access log shows
`token=<redacted>` however the key was spelled. Anything else gets 401 and a login hint.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from controller.api.audit import recent
from controller.api.auth import bearer
from controller.api.context import get_ctx
from controller.api.views import app_view, host_view
from controller.context import Context
from controller.store.models import App, Host, Instance, Release, Token
from controller.store.tokens import hash_token

COOKIE = "paas_status"
RELEASES_PER_APP = 5
EVENTS = 30
SESSION_S = 12 * 3600.0
MAX_SESSIONS = 1000

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)

router = APIRouter(tags=["status"])


@router.get("/status", response_class=HTMLResponse, include_in_schema=False)
async def status_page(request: Request, ctx: Context = Depends(get_ctx)) -> Response:
    sessions = _sessions(request)
    given = request.query_params.get("token")  # percent-decoded: any spelling of the key
    if given is not None:
        if not await run_in_threadpool(_is_admin, ctx, hash_token(given)):
            return _login(401, "that token is unknown, revoked or not an admin token")
        redirect = RedirectResponse("/status", status_code=303)
        redirect.set_cookie(
            COOKIE,
            sessions.open(hash_token(given)),
            max_age=int(SESSION_S),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/status",
        )
        return redirect
    token = bearer(request)
    token_hash = hash_token(token) if token else sessions.token_hash(request.cookies.get(COOKIE))
    if token_hash is None or not await run_in_threadpool(_is_admin, ctx, token_hash):
        return _login(401, "open /status?token=<admin token> once to see this page")
    model = await run_in_threadpool(page_model, ctx)
    html = _templates.get_template("status.html.j2").render(**model)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


class StatusSessions:
    """Status-page sessions: a random id (the cookie) -> the sha256 of the admin token that
    opened it. In memory: they end with the process or after SESSION_S; the token is checked
    again on every visit, so revoking it ends its sessions at once."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._by_id: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def open(self, token_hash: str) -> str:
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._by_id = {k: v for k, v in self._by_id.items() if v[1] > now}
            while len(self._by_id) >= MAX_SESSIONS:
                self._by_id.pop(next(iter(self._by_id)))  # the oldest
            self._by_id[session_id] = (token_hash, now + SESSION_S)
        return session_id

    def token_hash(self, session_id: str | None) -> str | None:
        if not session_id:
            return None
        with self._lock:
            found = self._by_id.get(session_id)
        if found is None or found[1] <= self.clock():
            return None
        return found[0]


def _sessions(request: Request) -> StatusSessions:
    state = request.app.state
    if not hasattr(state, "status_sessions"):
        state.status_sessions = StatusSessions()
    return state.status_sessions


class RedactTokenQuery(logging.Filter):
    """uvicorn's access log prints the path with its raw query: hide every parameter whose
    key, percent-decoded in any spelling (`tok%65n`, `%74oken`, `TOKEN`), names a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(arg) if isinstance(arg, str) and "?" in arg else arg
                for arg in record.args
            )
        return True


def redact_query(target: str) -> str:
    """`/status?tok%65n=abc&x=1` -> `/status?token=<redacted>&x=1`."""
    path, _, query = target.partition("?")
    parts = []
    for part in query.split("&"):
        key = unquote_plus(part.partition("=")[0])
        parts.append("token=<redacted>" if "token" in key.lower() else part)
    return f"{path}?{'&'.join(parts)}"


def redact_access_log() -> None:
    """Called by create_app (once per logger: filters are not added twice)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokenQuery) for f in access.filters):
        access.addFilter(RedactTokenQuery())


def _is_admin(ctx: Context, token_hash: str) -> bool:
    with ctx.db.read() as session:
        query = select(Token.id).where(Token.sha256 == token_hash, Token.kind == "admin")
        return session.execute(query).first() is not None


def _login(status: int, message: str) -> HTMLResponse:
    html = _templates.get_template("status_login.html.j2").render(message=message)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def page_model(ctx: Context) -> dict[str, Any]:
    """Everything the template shows, computed here (templates format, they do not decide)."""
    with ctx.db.read() as session:
        apps = list(session.execute(select(App).order_by(App.name)).scalars())
        app_rows = []
        for app in apps:
            view = app_view(app, ctx.settings)
            releases = sorted(app.releases, key=lambda r: r.version, reverse=True)
            app_rows.append(
                {
                    "name": app.name,
                    "url": view.urls[0],
                    "active": view.active_release,
                    "instances": app.instances,
                    "releases": [_release(r) for r in releases[:RELEASES_PER_APP]],
                }
            )
        instances = [
            {
                "app": i.app.name,
                "id": i.id,
                "release": i.release.version,
                "host": i.host.name,
                "port": i.port if i.port is not None else "",
                "state": i.state,
                "routed": "yes" if i.routed else "no",
            }
            for i in session.execute(
                select(Instance).where(Instance.desired == "run").order_by(Instance.id)
            ).scalars()
        ]
        hosts = [
            host_view(session, h)
            for h in session.execute(select(Host).order_by(Host.name)).scalars()
        ]
    events = recent(ctx, limit=EVENTS)
    return {
        "now": _when(datetime.now(UTC)),
        "domain": ctx.settings.domain,
        "apps": app_rows,
        "instances": instances,
        "hosts": [
            {
                "name": h.name,
                "role": h.role,
                "address": h.address,
                "state": h.state,
                "instances": h.instances,
                "heartbeat": _when(h.last_heartbeat),
                "error": h.proxy_error or "",
            }
            for h in hosts
        ],
        "events": [
            {
                "at": _when(e.at),
                "who": f"{e.scope or 'no'} token #{e.token_id}"
                + (f" ({e.token_name})" if e.token_name else "")
                if e.token_id is not None
                else "anonymous",
                "what": f"{e.method} {e.route}",
                "app": e.app or "",
                "summary": e.summary,
                "status": e.status,
            }
            for e in events
        ],
    }


def _release(release: Release) -> dict[str, Any]:
    return {
        "version": release.version,
        "status": release.status,
        "description": release.description,
        "created": _when(release.created_at),
    }


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "never"
