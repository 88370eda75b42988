"""The one watch loop both agents run: a blocking query for their desired state (a machine's
instances, a frontend's routing table), handed to the agent after every answer.

- An outage pauses the watch (one log line when it starts, one when it ends, jittered
  back-off between tries); what the agent serves is never touched meanwhile.
- A refused host token (401) makes the agent join again, e.g. after a registry reset.
- Re-watch: a watch sent while the host was cut off can hang on a dead connection long
  after the link is back; a report's answer showing the registry past our index cuts it
  short, so the changes made during the cut do not wait for it.
- Rate limit: an answer that brings nothing new and came back at once (the registry did
  not block) is followed by a pause, so a misbehaving registry never makes us spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from agent.errors import RegistryCallFailed
from agent.link.outage import OutageLog, sleep_or_stop

log = logging.getLogger(__name__)

# An answer with an unchanged index that came back sooner than this did not block...
MIN_BLOCK_S = 1.0
# ...and the next watch waits this long first.
SPIN_PAUSE_S = 0.5


class Indexed(Protocol):
    @property
    def index(self) -> int: ...


S = TypeVar("S", bound=Indexed)
T = TypeVar("T")


class StateWatch(Generic[S]):
    """Watches one desired state and hands every answer to `apply` (which must be idempotent:
    an answer with an unchanged index comes after each wait that saw no change)."""

    def __init__(
        self,
        *,
        what: str,
        fetch: Callable[[int], Awaitable[S]],
        apply: Callable[[S], Awaitable[None]],
        start_index: int,
        rejoin: Callable[[RegistryCallFailed], Awaitable[None]],
        outage: OutageLog,
    ) -> None:
        self._what = what
        self._fetch = fetch  # one blocking query past the index given
        self._apply = apply
        self._start_index = start_index  # the opening watch asks past this index
        self._rejoin = rejoin
        self.outage = outage
        self._waiting_past = start_index  # the index the watch in flight waits past
        self._rewatch = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        index = self._start_index
        while not stop.is_set():
            started = time.monotonic()
            self._waiting_past = index
            try:
                state = await unless_rewatched(self._fetch(index), self._rewatch)
            except RegistryCallFailed as exc:
                delay = self.outage.failed(exc)
                if exc.status == 401:
                    await self._rejoin(exc)
                await sleep_or_stop(stop, delay)
                continue
            if state is None:
                log.info(
                    "the registry is past %s index %d: watching again at once", self._what, index
                )
                continue
            self.outage.recovered()
            unchanged = state.index == index
            index = state.index
            await self._apply(state)
            if unchanged and time.monotonic() - started < MIN_BLOCK_S:
                await sleep_or_stop(stop, SPIN_PAUSE_S)

    def index_seen(self, index: int) -> None:
        """The registry's index, as a report's answer carried it: past the index the watch in
        flight waits for, that watch may be lost, so watch again now. The opening watch is
        left alone (it answers at once, or after one wait)."""
        if self._start_index < self._waiting_past < index:
            self._rewatch.set()


async def unless_rewatched(watch: Awaitable[T], rewatch: asyncio.Event) -> T | None:
    """The watch's answer, or None (the watch cancelled) when `rewatch` is set first."""
    rewatch.clear()
    fetch = asyncio.ensure_future(watch)
    woken = asyncio.ensure_future(rewatch.wait())
    try:
        await asyncio.wait({fetch, woken}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
    return fetch.result() if not fetch.cancelled() else None
