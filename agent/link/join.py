"""Joining the registry: the one join both agents use.

The first run trades the join token for a host token and keeps it in state_dir/host-token
(0600); later runs read it back. Through an outage the join is retried with back-off; a
refusal no retry can fix (a wrong join token, no token at all) stops the agent with the
registry's own words, whichever role it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent.errors import RegistryCallFailed
from agent.link.client import RegistryClient
from agent.link.outage import OutageLog, sleep_or_stop
from agent.settings import AgentSettings
from common.fsutil import atomic_write
from common.wire import HostJoin

log = logging.getLogger(__name__)


async def join_with_retry(
    client: RegistryClient, settings: AgentSettings, stop: asyncio.Event
) -> bool:
    """join_or_load_token, retried with back-off through outages; False once `stop` is set.
    A refusal that no retry can fix (a wrong join token) raises."""
    outage = OutageLog("could not join the registry (will keep trying)")
    while not stop.is_set():
        try:
            await join_or_load_token(client, settings)
            return True
        except RegistryCallFailed as exc:
            if not exc.retryable:
                raise
            await sleep_or_stop(stop, outage.failed(exc))
    return False


async def rejoin(client: RegistryClient, settings: AgentSettings, exc: RegistryCallFailed) -> None:
    """The registry no longer knows our host token (e.g. it was reset): join again if we
    have a join token; a failure is left to the caller's next retry."""
    if not settings.join_token:
        return
    log.warning("registry refused the host token (%s); joining again", exc)
    settings.host_token_file.unlink(missing_ok=True)
    with contextlib.suppress(RegistryCallFailed):
        await join_or_load_token(client, settings)


def require_a_token(settings: AgentSettings) -> None:
    """Refuse at once, before anything starts, an agent that has neither a kept host token
    nor a join token: no registry can ever let it in."""
    if not settings.host_token_file.is_file() and not settings.join_token:
        raise _no_token(settings)


def _no_token(settings: AgentSettings) -> RegistryCallFailed:
    return RegistryCallFailed(
        f"no host token in {settings.host_token_file} and no join token given; pass"
        " --join-token (or PAAS_JOIN_TOKEN) the first time",
        status=401,
    )


async def join_or_load_token(client: RegistryClient, settings: AgentSettings) -> str:
    """The host token: read from state_dir/host-token if present, else join once and keep it.

    Sets `client.token` too. The join token is needed only the first time.
    """
    token_file = settings.host_token_file
    if token_file.is_file():
        token = token_file.read_text().strip()
        if token:
            client.token = token
            log.info("using the host token kept in %s", token_file)
            return token
    if not settings.join_token:
        raise _no_token(settings)
    joined = await client.join(
        HostJoin(
            name=settings.name,
            role=settings.role,
            address=settings.address,
            proxy_port=settings.advertised_proxy_port,
            labels=settings.labels,
        ),
        join_token=settings.join_token,
    )
    atomic_write(token_file, joined.token, mode=0o600)
    client.token = joined.token
    log.info(
        "joined the registry as %s host %r; host token kept in %s",
        settings.role,
        joined.name,
        token_file,
    )
    return joined.token
