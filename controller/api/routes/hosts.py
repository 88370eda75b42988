"""Hosts: join, desired state (watch), status reports, and the routing table (watch).

A join token only adds new hosts: a host name that already joined belongs to that host
(its token, its address, for a frontend every private key), so joining under it again is
refused unless an admin does it (admin token as the join token) or removed the host first
(`DELETE /v1/hosts/{host}`, `paas hosts:remove`). An agent that restarts keeps its saved
host token and never joins again.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Query, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from common import wire
from common.agent_auth import api_key
from common.names import HostName
from controller.api.auth import (
    Principal,
    check_own_host,
    principal,
    require_admin,
    require_admin_or_host,
    require_join,
)
from controller.api.context import get_ctx
from controller.api.queries import INDEX_HEADER, get_host
from controller.api.shared_watch import shared_watch
from controller.api.views import desired_state, host_view, routing_table
from controller.context import Context
from controller.core.clock import now
from controller.core.deploys import apply_report
from controller.core.hostloss import refill
from controller.errors import Conflict, Forbidden
from controller.store.agent_keys import seal
from controller.store.db import bump, revision
from controller.store.models import Host, Instance
from controller.store.secretbox import keyring_of
from controller.store.tokens import issue_token, revoke_tokens

log = logging.getLogger("paas.registry")

router = APIRouter(prefix="/v1", tags=["hosts"])


@router.post("/hosts/join", response_model=wire.HostJoined)
def join_host(
    body: wire.HostJoin, who: Principal = Depends(require_join), ctx: Context = Depends(get_ctx)
) -> wire.HostJoined:
    with ctx.db.write() as session:
        host = session.execute(select(Host).where(Host.name == body.name)).scalar_one_or_none()
        if host is None:
            host = Host(name=body.name)
            session.add(host)
            log.info(
                "host %s joined as %s at %s:%d", body.name, body.role, body.address, body.proxy_port
            )
        elif who.kind != "admin":
            raise Conflict(
                f"host {body.name} has already joined; a join token only adds new hosts."
                " If this machine lost its state, an admin removes the old host first"
                f" (`paas hosts:remove {body.name}`) or re-joins it with the admin token"
            )
        else:
            revoke_tokens(session, "host", host_name=body.name)
            log.info(
                "host %s re-joined as %s at %s:%d; its old token is revoked",
                body.name,
                body.role,
                body.address,
                body.proxy_port,
            )
        host.role, host.address, host.proxy_port = body.role, body.address, body.proxy_port
        host.labels = dict(body.labels)
        was_down = host.state == "down"
        host.state, host.last_heartbeat = "up", now()
        token = issue_token(session, "host", host_name=body.name)
        # The key this registry signs agent API requests with; not derivable from the row.
        host.api_key_sealed = seal(keyring_of(ctx.db.engine), body.name, api_key(token))
        if was_down:
            refill(session, now=now())
        bump(session, desired=True)
    return wire.HostJoined(name=body.name, token=token)


@router.get("/hosts", response_model=list[wire.Host], dependencies=[Depends(require_admin)])
def list_hosts(ctx: Context = Depends(get_ctx)) -> list[wire.Host]:
    with ctx.db.read() as session:
        hosts = session.execute(select(Host).order_by(Host.name)).scalars()
        return [host_view(session, h) for h in hosts]


@router.delete(
    "/hosts/{host}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Depends(require_admin)]
)
def remove_host(host: HostName, ctx: Context = Depends(get_ctx)) -> Response:
    """Forget a host: its token stops working, its instances are placed on the other hosts,
    and its name is free to join again with the join token."""
    with ctx.db.write() as session:
        row = get_host(session, host)
        revoke_tokens(session, "host", host_name=host)
        for instance in session.execute(select(Instance).where(Instance.host_id == row.id)):
            session.delete(instance[0])
        session.flush()
        session.delete(row)
        session.flush()
        session.expire_all()  # loaded instance lists must not keep the deleted rows
        refill(session, now=now())
        bump(session, desired=True)
    log.info("host %s removed by an admin; its token is revoked", host)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/hosts/{host}/desired", response_model=wire.DesiredState)
async def read_desired(
    host: HostName,
    index: int = Query(0, ge=0),
    wait: str | None = Query(None, description="30s, 500ms; at most 300s"),
    who: Principal = Depends(require_admin_or_host),
    ctx: Context = Depends(get_ctx),
) -> Response:
    check_own_host(who, host, admin_may=True)
    await run_in_threadpool(_check_joined, ctx, host)

    def build(session: Session, seen: int) -> wire.DesiredState:
        return desired_state(session, get_host(session, host), index=seen, settings=ctx.settings)

    key = ("desired", host)
    return await shared_watch(ctx, index=index, wait=wait, key=key, build=build)


def _check_joined(ctx: Context, host: str) -> None:
    with ctx.db.read() as session:
        get_host(session, host)


@router.post("/hosts/{host}/report", status_code=status.HTTP_204_NO_CONTENT)
def report(
    host: HostName,
    body: wire.HostReport,
    who: Principal = Depends(principal),
    ctx: Context = Depends(get_ctx),
) -> Response:
    check_own_host(who, host, admin_may=False)
    with ctx.db.write() as session:
        row = get_host(session, host)
        was_down = row.state == "down"
        moment = now()
        if body.capacity is not None:
            record_capacity(row, body.capacity)
        apply_report(session, row, body, now=moment, timeout_s=ctx.settings.deploy_timeout_s)
        if body.api_port is not None:
            row.api_port = body.api_port  # where the registry reaches this agent's API
        if was_down:
            log.info("host %s reports again: marked up", host)
            refill(session, now=moment)
        desired_index = revision(session).desired_seq
    # The index of the desired state now: an agent whose watch is behind it (its long poll
    # was lost while it was cut off) watches again at once instead of waiting the poll out.
    headers = {INDEX_HEADER: str(desired_index)}
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)


@router.get("/routing", response_model=wire.RoutingTable)
async def read_routing(
    index: int = Query(0, ge=0),
    wait: str | None = Query(None, description="30s, 500ms; at most 300s"),
    who: Principal = Depends(require_admin_or_host),
    ctx: Context = Depends(get_ctx),
) -> Response:
    if who.kind == "host":
        await run_in_threadpool(_check_frontend, ctx, who.host_name or "")

    def build(session: Session, seen: int) -> wire.RoutingTable:
        return routing_table(session, index=seen, settings=ctx.settings)

    # Built once per index for every frontend and watcher (controller/sync/answer_cache.py).
    return await shared_watch(ctx, index=index, wait=wait, key="routing", build=build)


def record_capacity(host: Host, capacity: wire.HostCapacity) -> None:
    """Keep the figures placement reads; no revision bump (only new placements use them)."""
    host.cpu_count = capacity.cpu_count
    host.memory_total_mb = capacity.memory_total_mb
    host.memory_available_mb = capacity.memory_available_mb
    host.load_1m = capacity.load_1m
    if capacity.disk_total_mb is not None:
        host.state_disk_mb = capacity.state_disk_mb
        host.disk_free_mb = capacity.disk_free_mb
        host.disk_total_mb = capacity.disk_total_mb


def _check_frontend(ctx: Context, host: str) -> None:
    with ctx.db.read() as session:
        if get_host(session, host).role != "frontend":
            raise Forbidden(f"host {host} is not a frontend; only frontends read the routing table")
