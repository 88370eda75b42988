"""`GET /v1/apps/{app}/logs`: the app's process logs from the agents of its hosts, merged.

The registry asks each machine agent that runs (or ran) the app for its stamped lines
(agent/machine/api/server.py) and relays them as NDJSON, one object per line:
`{"app", "instance", "host", "time", "line"}`; `{"error": ...}` when a host cannot be read
(the others still stream). Without `follow` the lines of all hosts are merged by time and the
last `lines` are sent; with `follow` that history comes first, then new lines as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Query
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from common.names import AppName, HostName, parse_duration
from common.streaming import NDJSON, ClosingStream, ndjson
from controller.api.auth import require_app_scope
from controller.api.context import get_ctx
from controller.api.queries import get_app
from controller.context import Context
from controller.errors import RegistryError
from controller.store.models import Host
from controller.sync.agent_link import AgentLink, agent_client, app_hosts, link_for, named_host

log = logging.getLogger("paas.registry")

router = APIRouter(prefix="/v1/apps", tags=["logs"], dependencies=[Depends(require_app_scope)])

HISTORY_WAIT_S = 10.0  # a host whose history has not arrived by then is left behind
MAX_LINES = 10000


@router.get("/{app}/logs", response_class=ClosingStream)
async def app_logs(
    app: AppName,
    host: HostName | None = Query(None),
    since: str | None = Query(None, description="e.g. 10m, 1h"),
    lines: int = Query(100, ge=0, le=MAX_LINES),
    follow: bool = Query(False),
    health: bool = Query(False, description="also the lines of health checks (paas-health/)"),
    ctx: Context = Depends(get_ctx),
) -> ClosingStream:
    since_s = parse_duration(since) if since else None
    links, problems = await run_in_threadpool(_links, ctx, app, host)
    params: dict[str, Any] = {"lines": lines, "follow": "1" if follow else "0"}
    if health:
        params["health"] = "1"
    if since_s is not None:
        params["since_s"] = since_s
    stream = _merged(app, links, problems, params, lines=lines, follow=follow)
    return ClosingStream(stream, media_type=NDJSON)


def _links(ctx: Context, app: str, host: str | None) -> tuple[list[AgentLink], list[str]]:
    state_dir = ctx.settings.state_dir
    with ctx.db.read() as session:
        row = get_app(session, app)
        if host is not None:
            return [link_for(session, named_host(session, host), state_dir=state_dir)], []
        hosts = app_hosts(session, row)
        if not hosts:  # nothing placed now: ask every machine, it may have old lines
            hosts = list(
                session.execute(
                    select(Host).where(Host.role == "machine", Host.state == "up")
                ).scalars()
            )
        links, problems = [], []
        for h in hosts:
            try:
                links.append(link_for(session, h, state_dir=state_dir))
            except RegistryError as exc:
                problems.append(str(exc))
        return links, problems


async def _merged(
    app: str,
    links: list[AgentLink],
    problems: list[str],
    params: dict[str, Any],
    *,
    lines: int,
    follow: bool,
) -> AsyncIterator[bytes]:
    for problem in problems:
        yield ndjson({"error": problem})
    queue: asyncio.Queue[tuple[str, dict[str, Any] | None]] = asyncio.Queue()
    async with agent_client() as client:
        tasks = [
            asyncio.create_task(_read(client, link, f"/v1/logs/{app}", params, queue))
            for link in links
        ]
        try:
            history, live_hosts = await _history(queue, len(links))
            history.sort(key=lambda item: item.get("time", ""))
            for item in history[-lines:] if lines else history:
                yield ndjson(item)
            if not follow:
                return
            while live_hosts:
                try:
                    host, event = await asyncio.wait_for(queue.get(), timeout=2.0)
                except TimeoutError:
                    yield b"\n"  # keeps the client connection checked
                    continue
                if event is None:
                    live_hosts.discard(host)
                elif "live" not in event:
                    yield ndjson(event)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def _history(
    queue: asyncio.Queue[tuple[str, dict[str, Any] | None]], hosts: int
) -> tuple[list[dict[str, Any]], set[str]]:
    """Collect every host's history: until its `live` marker (follow) or its end."""
    history: list[dict[str, Any]] = []
    live: set[str] = set()
    pending = hosts
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HISTORY_WAIT_S
    while pending:
        try:
            host, item = await asyncio.wait_for(queue.get(), timeout=deadline - loop.time())
        except TimeoutError:
            history.append({"error": f"{pending} host(s) did not send their logs in time"})
            break
        if item is None:
            pending -= 1
        elif "live" in item:
            live.add(host)
            pending -= 1
        else:
            history.append(item)
    return history, live


async def _read(
    client: httpx.AsyncClient,
    link: AgentLink,
    path: str,
    params: dict[str, Any],
    queue: asyncio.Queue[tuple[str, dict[str, Any] | None]],
) -> None:
    try:
        async with client.stream(
            "GET", f"{link.url}{path}", params=params, auth=link.auth
        ) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")[:300]
                await queue.put((link.host, {"error": f"host {link.host}: {body}"}))
                return
            async for raw in response.aiter_lines():
                if raw.strip():
                    await queue.put((link.host, json.loads(raw)))
    except httpx.HTTPError as exc:
        await queue.put((link.host, {"error": f"host {link.host} unreachable: {exc}"}))
    finally:
        await queue.put((link.host, None))
