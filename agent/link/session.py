"""The skeleton both agents share: join, watch the desired state, apply it, report, and ride
out registry outages, all on one RegistryClient.

An agent supplies only what is its own: which state it watches (`fetch`), what applying it
means (`apply`), what it reports (`build_report`), and its heartbeat duties. Everything about
the link (join and its retry rule, re-join on a refused host token, back-off and outage
logs, re-watch, rate limit, coalesced reports) is written once, in agent/link/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic

from agent.errors import RegistryCallFailed
from agent.link.client import RegistryClient
from agent.link.join import join_with_retry, rejoin
from agent.link.outage import OutageLog
from agent.link.reporter import Reporter
from agent.link.watch import S, StateWatch
from agent.settings import AgentSettings
from common.wire import HostReport


class RegistrySession(Generic[S]):
    def __init__(
        self,
        client: RegistryClient,
        settings: AgentSettings,
        *,
        what: str,
        fetch: Callable[[int], Awaitable[S]],
        apply: Callable[[S], Awaitable[None]],
        start_index: int,
        meanwhile: str,
        build_report: Callable[[], HostReport],
        report_sent: Callable[[HostReport], None] | None = None,
        heartbeat: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`what` names the watched state in logs; `meanwhile` tells the operator what goes
        on during an outage ("everything keeps running"); `heartbeat` runs before each
        report (the frontend checks HAProxy and retries a refused table there)."""
        self.client = client
        self.settings = settings
        self.watch: StateWatch[S] = StateWatch(
            what=what,
            fetch=fetch,
            apply=apply,
            start_index=start_index,
            rejoin=self._rejoin,
            outage=OutageLog(f"registry unreachable, {meanwhile}", "registry reachable again"),
        )
        self.reporter = Reporter(
            client,
            settings.name,
            build=build_report,
            sent=report_sent,
            heartbeat_s=settings.heartbeat_interval_s,
            index_seen=self.watch.index_seen,
            before_each=heartbeat,
        )

    async def join(self, stop: asyncio.Event) -> bool:
        """Join (or load the kept host token), retrying through outages; False when stopped.
        A refusal no retry fixes (a wrong join token) raises RegistryCallFailed."""
        return await join_with_retry(self.client, self.settings, stop)

    async def follow(self, stop: asyncio.Event) -> None:
        """Watch and report until cancelled (the watch also ends once `stop` is set)."""
        await asyncio.gather(self.watch.run(stop), self.reporter.run())

    async def run(self, stop: asyncio.Event) -> None:
        """Join, then follow."""
        if await self.join(stop):
            await self.follow(stop)

    async def _rejoin(self, exc: RegistryCallFailed) -> None:
        await rejoin(self.client, self.settings, exc)
