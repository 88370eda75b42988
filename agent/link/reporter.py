"""A host's status reports: sent soon after a change (a burst coalesced), else as heartbeats.

A failed report is logged once when the outage starts and once when it ends; the next
heartbeat simply tries again, so an outage never stops the agent or what it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agent.errors import RegistryCallFailed
from agent.link.client import RegistryClient
from common.wire import HostReport

log = logging.getLogger(__name__)

COALESCE_S = 0.01


class Reporter:
    def __init__(
        self,
        client: RegistryClient,
        host: str,
        *,
        build: Callable[[], HostReport],
        sent: Callable[[HostReport], None],
        heartbeat_s: float,
        index_seen: Callable[[int], None] | None = None,
    ) -> None:
        self._client = client
        self._host = host
        self._build = build
        self._sent = sent  # told about every report the registry accepted
        self._heartbeat_s = heartbeat_s
        self._index_seen = index_seen  # told the registry's desired index after each report
        self._soon = asyncio.Event()
        self._outage = False

    def soon(self) -> None:
        """Something changed: report it now instead of at the next heartbeat."""
        self._soon.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._soon.wait(), timeout=self._heartbeat_s)
            if self._soon.is_set():
                await asyncio.sleep(COALESCE_S)  # let a burst of changes settle
            self._soon.clear()
            await self.send()

    async def send(self) -> bool:
        report = self._build()
        try:
            index = await self._client.report(self._host, report)
        except RegistryCallFailed as exc:
            if not self._outage:
                log.warning("could not report to the registry (will keep trying): %s", exc)
                self._outage = True
            return False
        if self._outage:
            log.info("reports reach the registry again")
            self._outage = False
        self._sent(report)
        if index is not None and self._index_seen is not None:
            self._index_seen(index)
        return True
