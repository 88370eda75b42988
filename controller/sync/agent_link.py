"""How the registry reaches machine agents' APIs (logs, one-off runs): address, port, key.

Every request is signed with the host's agent API key (common/agent_auth.py), which the
database holds only sealed with the registry's keyring (controller/store/agent_keys.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.agent_auth import SignedAuth
from controller.errors import Conflict, NotFound
from controller.store.agent_keys import SealError, unseal
from controller.store.models import App, Host, Instance
from controller.store.secretbox import keyring_of

CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class AgentLink:
    host: str
    url: str  # http://address:api_port
    key: bytes

    @property
    def auth(self) -> SignedAuth:
        """Pass as `auth=` on each request: it signs method, path, time and body."""
        return SignedAuth(self.key)


def _url(host: Host) -> str:
    address = f"[{host.address}]" if ":" in host.address else host.address
    return f"http://{address}:{host.api_port}"


def link_for(session: Session, host: Host, *, state_dir: Path) -> AgentLink:
    if host.role != "machine":
        raise Conflict(f"host {host.name} is a {host.role}, not a machine; it runs no apps")
    if host.api_port is None:
        raise Conflict(f"host {host.name} has not reported an agent API yet (older agent?)")
    if host.api_key_sealed is None:
        raise Conflict(
            f"host {host.name} joined before signed agent API requests; an admin re-joins it"
            " (see docs/operations.md) to reach its logs and runs"
        )
    try:
        keyring = keyring_of(session.get_bind())
        key = unseal(keyring, host.name, host.api_key_sealed, state_dir=state_dir)
    except SealError as exc:
        raise Conflict(str(exc)) from exc
    return AgentLink(host=host.name, url=_url(host), key=key)


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
