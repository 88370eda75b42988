"""Blocking queries whose answer is shared: every watcher woken by one change gets the same
bytes, built once for that index (controller/sync/answer_cache.py)."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from fastapi import Response
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from controller.api.queries import INDEX_HEADER, current_index, expire_if_due
from controller.context import Context
from controller.sync.watch import parse_wait, wait_past


async def shared_watch(
    ctx: Context,
    *,
    index: int,
    wait: str | None,
    key: Hashable,
    build: Callable[[Session, int], BaseModel],
) -> Response:
    """Wait until `desired_seq` passes `index`, then answer with the cached JSON for it."""
    wait_s = parse_wait(wait)
    await run_in_threadpool(expire_if_due, ctx)
    current = await wait_past(
        index, lambda: current_index(ctx, "desired_seq"), notifier=ctx.notifier, wait_s=wait_s
    )
    answer = await run_in_threadpool(ctx.answers.get, ctx.db, key, build, current=current)
    return Response(
        content=answer.body,
        media_type="application/json",
        headers={INDEX_HEADER: str(answer.index)},
    )
