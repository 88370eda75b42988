"""An app's data folder (PAAS_DATA_DIR) through the registry: export, import, delete.

`GET /v1/apps/{app}/data` streams a tar.gz of the data folder from the host that holds it
(the app's pinned host, else one that runs it); `PUT` replaces that folder's contents with
an uploaded tar.gz (bounded, checked before it is read; a bad archive changes nothing).
The agent packs and unpacks as the app's own uid (agent/machine/storage/datadir.py); the registry
only
relays bytes, signed like every agent request (controller/sync/agent_link.py).
`paas apps:delete --delete-data` calls `delete_everywhere` after the app is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from common.names import AppName
from controller.api.auth import require_app_scope
from controller.api.context import get_ctx
from controller.api.queries import get_app
from controller.context import Context
from controller.errors import Conflict, Invalid, NotFound, RegistryError
from controller.store.models import Host
from controller.sync.agent_link import AgentLink, agent_client, app_hosts, link_for, named_host

log = logging.getLogger("paas.registry")

MAX_IMPORT_BYTES = 256 << 20  # the agent's bound too (agent/machine/api/data.py)

router = APIRouter(prefix="/v1/apps", tags=["data"], dependencies=[Depends(require_app_scope)])


class AgentUnavailable(RegistryError):
    status_code = 502


class TooLarge(RegistryError):
    status_code = 413


def _data_link(ctx: Context, app: str) -> AgentLink:
    with ctx.db.read() as session:
        row = get_app(session, app)
        if row.keeps_data and row.data_host is not None:
            host = named_host(session, row.data_host)
        else:
            hosts = app_hosts(session, row, serving_first=True)
            if not hosts:
                raise Conflict(f"app {app} has no instances on any host; deploy it first")
            host = hosts[0]
        return link_for(session, host, state_dir=ctx.settings.state_dir)


def _translate(link: AgentLink, status: int, body: bytes) -> RegistryError:
    try:
        detail = str(json.loads(body)["detail"])
    except (ValueError, KeyError, TypeError):
        detail = body.decode(errors="replace").strip()[:500]
    if status == 404:
        return NotFound(f"host {link.host}: {detail}")
    if status in (413, 422):
        return Invalid(f"host {link.host}: {detail}")
    return AgentUnavailable(f"host {link.host}'s agent answered {status}: {detail}")


@router.get("/{app}/data")
async def export_data(app: AppName, ctx: Context = Depends(get_ctx)) -> StreamingResponse:
    link = await run_in_threadpool(_data_link, ctx, app)
    client_cm = agent_client()
    client = await client_cm.__aenter__()
    try:
        request = client.build_request("GET", f"{link.url}/v1/data/{app}")
        response = await client.send(request, auth=link.auth, stream=True)
    except httpx.HTTPError as exc:
        await client_cm.__aexit__(None, None, None)
        raise AgentUnavailable(f"host {link.host}'s agent is unreachable: {exc}") from exc
    if response.status_code != 200:
        body = await response.aread()
        await response.aclose()
        await client_cm.__aexit__(None, None, None)
        raise _translate(link, response.status_code, body)

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()
            await client_cm.__aexit__(None, None, None)

    headers = {"x-paas-host": link.host}
    return StreamingResponse(relay(), media_type="application/gzip", headers=headers)


@router.put("/{app}/data")
async def import_data(app: AppName, request: Request, ctx: Context = Depends(get_ctx)) -> dict:
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > MAX_IMPORT_BYTES:
        raise TooLarge(f"a data import is at most {MAX_IMPORT_BYTES >> 20} MiB (content-length)")
    link = await run_in_threadpool(_data_link, ctx, app)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_IMPORT_BYTES:
            raise TooLarge(f"a data import is at most {MAX_IMPORT_BYTES >> 20} MiB")
        chunks.append(chunk)
    body = b"".join(chunks)
    async with agent_client() as client:
        try:
            response = await client.put(f"{link.url}/v1/data/{app}", content=body, auth=link.auth)
        except httpx.HTTPError as exc:
            raise AgentUnavailable(f"host {link.host}'s agent is unreachable: {exc}") from exc
    if response.status_code != 200:
        raise _translate(link, response.status_code, response.content)
    log.info("imported %d bytes of data into %s on host %s", size, app, link.host)
    return {"host": link.host, "bytes": size}


async def delete_everywhere(ctx: Context, app: str, identity: str) -> dict[str, str]:
    """Ask every machine host to remove the data of app `identity` (best effort): host ->
    "deleted" or why not. A host that was not reached keeps that data aside, out of every
    app's reach (agent/machine/storage/datadir.py), for an operator to remove."""

    def links() -> tuple[list[AgentLink], dict[str, str]]:
        found: list[AgentLink] = []
        problems: dict[str, str] = {}
        with ctx.db.read() as session:
            for host in session.query(Host).filter(Host.role == "machine").all():
                try:
                    found.append(link_for(session, host, state_dir=ctx.settings.state_dir))
                except RegistryError as exc:
                    problems[host.name] = str(exc)
        return found, problems

    found, result = await run_in_threadpool(links)

    async def one(client: httpx.AsyncClient, link: AgentLink) -> None:
        try:
            response = await client.delete(
                f"{link.url}/v1/data/{app}", params={"app_id": identity}, auth=link.auth
            )
        except httpx.HTTPError as exc:
            result[link.host] = f"unreachable: {exc}"
            return
        result[link.host] = (
            "deleted" if response.status_code == 200 else f"answered {response.status_code}"
        )

    async with agent_client() as client:
        await asyncio.gather(*(one(client, link) for link in found))
    return result
