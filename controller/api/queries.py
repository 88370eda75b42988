"""Small helpers the route modules share: lookups that 404, lazy deadlines, watches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from fastapi import Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from controller.context import Context
from controller.core.clock import now
from controller.core.deploys import expire_deadlines, has_overdue
from controller.core.rollback import has_crash_loops, roll_back_crash_loops
from controller.errors import NotFound
from controller.store.db import revision
from controller.store.models import App, Host
from controller.sync.watch import parse_wait, wait_past

T = TypeVar("T")
INDEX_HEADER = "X-Paas-Index"


def get_app(session: Session, name: str) -> App:
    app = session.execute(select(App).where(App.name == name)).scalar_one_or_none()
    if app is None:
        raise NotFound(f"app {name} does not exist")
    return app


def get_host(session: Session, name: str) -> Host:
    host = session.execute(select(Host).where(Host.name == name)).scalar_one_or_none()
    if host is None:
        raise NotFound(f"host {name} has not joined")
    return host


def expire_if_due(ctx: Context) -> None:
    """Fail deploys past their deadline, switch those whose health window ended, roll back
    crash loops; a cheap read first so most calls never write."""
    timeout_s = ctx.settings.deploy_timeout_s
    moment = now()
    with ctx.db.read() as session:
        overdue = has_overdue(session, now=moment, timeout_s=timeout_s)
        looping = has_crash_loops(session, now=moment)
    if not (overdue or looping):
        return
    with ctx.db.write() as session:
        expire_deadlines(session, now=moment, timeout_s=timeout_s)
        if looping:
            roll_back_crash_loops(session, now=moment, timeout_s=timeout_s)


def current_index(ctx: Context, which: Literal["seq", "desired_seq"]) -> int:
    with ctx.db.read() as session:
        return getattr(revision(session), which)


async def watch(
    ctx: Context,
    response: Response,
    *,
    index: int,
    wait: str | None,
    which: Literal["seq", "desired_seq"],
    build: Callable[[Session, int], T],
) -> T:
    """Blocking query: wait until `which` passes `index`, then build the answer in one read."""
    wait_s = parse_wait(wait)
    await run_in_threadpool(expire_if_due, ctx)
    await wait_past(index, lambda: current_index(ctx, which), notifier=ctx.notifier, wait_s=wait_s)

    def read() -> tuple[int, T]:
        with ctx.db.read() as session:
            seen = getattr(revision(session), which)
            return seen, build(session, seen)

    seen, body = await run_in_threadpool(read)
    response.headers[INDEX_HEADER] = str(seen)
    return body
