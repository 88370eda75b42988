"""`POST /v1/apps/{app}/run`: a one-off command in the app's release environment on one host.

The registry picks the host (the one asked for, else one that serves the app), forwards the
argv list to that machine agent (agent/machine/api/server.py, agent/machine/run/oneoff.py) and
relays its NDJSON
stream: `{"stream": "stdout"|"stderr", "data"}` pieces, then `{"exit": code, "host"}`.
Closing the connection kills the command (the agent notices at its next write or heartbeat).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from common.names import AppName, HostName
from common.streaming import NDJSON, ClosingStream
from controller.api.auth import require_app_scope
from controller.api.context import get_ctx
from controller.api.queries import get_app
from controller.context import Context
from controller.errors import Conflict, Invalid, NotFound, RegistryError
from controller.sync.agent_link import AgentLink, agent_client, app_hosts, link_for, named_host

log = logging.getLogger("paas.registry")

router = APIRouter(prefix="/v1/apps", tags=["run"], dependencies=[Depends(require_app_scope)])


class AgentUnavailable(RegistryError):
    status_code = 502


class RunCreate(BaseModel):
    argv: list[str] = Field(min_length=1, max_length=256)
    host: HostName | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=86400)

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("the command may not be empty")
        if any("\x00" in arg for arg in value) or sum(len(a) for a in value) > 64 * 1024:
            raise ValueError("arguments may not contain NUL bytes or exceed 64 KiB in all")
        return value


@router.post("/{app}/run", response_class=ClosingStream)
async def run_command(
    app: AppName, body: RunCreate, ctx: Context = Depends(get_ctx)
) -> ClosingStream:
    link = await run_in_threadpool(_pick, ctx, app, body.host)
    payload = {"argv": body.argv, "timeout_s": body.timeout_s}
    client_cm = agent_client()
    client = await client_cm.__aenter__()
    try:
        request = client.build_request("POST", f"{link.url}/v1/run/{app}", json=payload)
        response = await client.send(request, auth=link.auth, stream=True)
    except httpx.HTTPError as exc:
        await client_cm.__aexit__(None, None, None)
        raise AgentUnavailable(f"host {link.host}'s agent is unreachable: {exc}") from exc
    if response.status_code != 200:
        detail = (await response.aread()).decode(errors="replace")[:500]
        await response.aclose()
        await client_cm.__aexit__(None, None, None)
        raise _translate(link, response.status_code, detail)
    return ClosingStream(_relay(response, client_cm), media_type=NDJSON)


async def _relay(
    response: httpx.Response, client_cm: contextlib.AbstractAsyncContextManager[object]
) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()
        await client_cm.__aexit__(None, None, None)


def _translate(link: AgentLink, status: int, body: str) -> RegistryError:
    try:
        detail = str(json.loads(body)["detail"])
    except (ValueError, KeyError, TypeError):
        detail = body.strip()
    if status == 404:
        return NotFound(f"host {link.host}: {detail}")
    if status == 422:
        return Invalid(f"host {link.host}: {detail}")
    return AgentUnavailable(f"host {link.host}'s agent answered {status}: {detail}")


def _pick(ctx: Context, app: str, host: str | None) -> AgentLink:
    with ctx.db.read() as session:
        row = get_app(session, app)
        if host is not None:
            return link_for(session, named_host(session, host), state_dir=ctx.settings.state_dir)
        hosts = app_hosts(session, row, serving_first=True)
        if not hosts:
            raise Conflict(f"app {app} has no instances on any host; deploy it first")
        return link_for(session, hosts[0], state_dir=ctx.settings.state_dir)
