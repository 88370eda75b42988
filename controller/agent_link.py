"""How the registry reaches machine agents' APIs (logs, one-off runs): address, port, secret.

The credential is sha256(host token), which the registry stores anyway (see
agent/api_server.py for why that is enough and what it protects).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.auth import host_api_secret
from controller.errors import Conflict, NotFound
from controller.models import App, Host, Instance

CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class AgentLink:
    host: str
    url: str  # http://address:api_port
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def _url(host: Host) -> str:
    address = f"[{host.address}]" if ":" in host.address else host.address
    return f"http://{address}:{host.api_port}"


def link_for(session: Session, host: Host) -> AgentLink:
    if host.role != "machine":
        raise Conflict(f"host {host.name} is a {host.role}, not a machine; it runs no apps")
    secret = host_api_secret(session, host.name)
    if host.api_port is None or secret is None:
        raise Conflict(f"host {host.name} has not reported an agent API yet (older agent?)")
    return AgentLink(host=host.name, url=_url(host), secret=secret)


def app_hosts(session: Session, app: App, *, serving_first: bool = False) -> list[Host]:
    """Machine hosts with an instance of `app` (serving, running ones first when asked)."""
    rows = session.execute(
        select(Instance, Host)
        .join(Host, Instance.host_id == Host.id)
        .where(Instance.app_id == app.id)
    ).all()

    def rank(pair: tuple[Instance, Host]) -> tuple[int, int, str]:
        inst, host = pair
        return (
            0 if (inst.serve or not serving_first) else 1,
            0 if (inst.state == "running" or not serving_first) else 1,
            host.name,
        )

    seen: dict[str, Host] = {}
    for _inst, host in sorted(rows, key=rank):
        if host.role == "machine":
            seen.setdefault(host.name, host)
    return list(seen.values())


def named_host(session: Session, name: str) -> Host:
    host = session.execute(select(Host).where(Host.name == name)).scalar_one_or_none()
    if host is None:
        raise NotFound(f"host {name} does not exist")
    return host


@asynccontextmanager
async def agent_client() -> AsyncIterator[httpx.AsyncClient]:
    """No read timeout: follows and runs stream for as long as they last (the agent bounds
    runs by its run_timeout_s and sends a blank line every few seconds)."""
    timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=None)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
        yield client
