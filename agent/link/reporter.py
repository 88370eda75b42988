"""A host's status reports: sent soon after a change (a burst coalesced), else as heartbeats.

A failed report is logged once when the outage starts and once when it ends; the next
heartbeat simply tries again, so an outage never stops the agent or what it serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agent.errors import RegistryCallFailed
from agent.link.client import RegistryClient
from agent.link.outage import OutageLog, wait_until_set
from common.wire import HostReport

COALESCE_S = 0.01


class Reporter:
    def __init__(
        self,
        client: RegistryClient,
        host: str,
        *,
        build: Callable[[], HostReport],
        heartbeat_s: float,
        sent: Callable[[HostReport], None] | None = None,
        index_seen: Callable[[int], None] | None = None,
        before_each: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self._host = host
        self._build = build
        self._sent = sent  # told about every report the registry accepted
        self._heartbeat_s = heartbeat_s
        self._index_seen = index_seen  # told the registry's desired index after each report
        self._before_each = before_each  # heartbeat duties of the agent, run before a report
        self._soon = asyncio.Event()
        self.outage = OutageLog(
            "could not report to the registry (will keep trying)",
            "reports reach the registry again",
        )

    def soon(self) -> None:
        """Something changed: report it now instead of at the next heartbeat."""
        self._soon.set()

    async def run(self) -> None:
        while True:
            await wait_until_set(self._soon, self._heartbeat_s)
            if self._soon.is_set():
                await asyncio.sleep(COALESCE_S)  # let a burst of changes settle
            self._soon.clear()
            if self._before_each is not None:
                await self._before_each()
            await self.send()

    async def send(self) -> bool:
        report = self._build()
        try:
            index = await self._client.report(self._host, report)
        except RegistryCallFailed as exc:
            self.outage.failed(exc)
            return False
        self.outage.recovered()
        if self._sent is not None:
            self._sent(report)
        if index is not None and self._index_seen is not None:
            self._index_seen(index)
        return True
