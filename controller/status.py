"""`GET /status`: a small read-only HTML page of the cluster (apps, releases, instances,
hosts, recent events from the audit log), rendered with Jinja2; no JavaScript.

Protection: an admin token, given either as `Authorization: Bearer <token>` (scripts) or once
as `/status?token=<token>`, which answers with a redirect to `/status` that sets the token in
an HttpOnly, SameSite=Strict cookie (Secure when the page was reached over HTTPS), so it is
not left in the address bar or the browser history; JavaScript on other pages cannot read it
and other sites cannot make the browser send it. Every visit checks the token again, so a
revoked token loses the page at once. The access log shows `token=<redacted>`. Anything
else gets 401 and a short login hint.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from controller.audit import recent
from controller.auth import bearer, lookup
from controller.context import Context, get_ctx
from controller.models import App, Host, Instance, Release
from controller.views import app_view, host_view

COOKIE = "paas_status"
RELEASES_PER_APP = 5
EVENTS = 30

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)

router = APIRouter(tags=["status"])


@router.get("/status", response_class=HTMLResponse, include_in_schema=False)
async def status_page(request: Request, ctx: Context = Depends(get_ctx)) -> Response:
    given = request.query_params.get("token")
    if given is not None:
        if not await run_in_threadpool(_is_admin, ctx, given):
            return _login(401, "that token is unknown, revoked or not an admin token")
        redirect = RedirectResponse("/status", status_code=303)
        redirect.set_cookie(
            COOKIE,
            given,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/status",
        )
        return redirect
    token = bearer(request) or request.cookies.get(COOKIE)
    if token is None or not await run_in_threadpool(_is_admin, ctx, token):
        return _login(401, "open /status?token=<admin token> once to see this page")
    model = await run_in_threadpool(page_model, ctx)
    html = _templates.get_template("status.html.j2").render(**model)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


class RedactTokenQuery(logging.Filter):
    """uvicorn's access log prints the path with its query: hide `?token=` values there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3:
            args = list(record.args)
            if isinstance(args[2], str) and "token=" in args[2]:
                args[2] = _TOKEN_QUERY.sub(r"\1token=<redacted>", args[2])
                record.args = tuple(args)
        return True


_TOKEN_QUERY = re.compile(r"([?&])token=[^&\s]*")


def redact_access_log() -> None:
    """Called by create_app (once per logger: filters are not added twice)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokenQuery) for f in access.filters):
        access.addFilter(RedactTokenQuery())


def _is_admin(ctx: Context, token: str) -> bool:
    who = lookup(ctx, token)
    return who is not None and who.kind == "admin"


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
