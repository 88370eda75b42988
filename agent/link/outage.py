"""Riding out a registry outage: growing, jittered retry delays, and one log line when an
outage starts and one when it ends (never one per retry).

Both agents' join, watch and reports use this one logger, so an operator reads the same
words from a machine and a frontend, and a fleet of agents never retries in lock-step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


def backoff_delays(
    *, base: float = 0.5, cap: float = 15.0, rng: Callable[[], float] = random.random
) -> Iterator[float]:
    """Endless retry delays: doubling from `base` up to `cap`, each with 'equal jitter'
    (half fixed, half random) so a fleet of agents does not retry in lock-step."""
    ceiling = base
    while True:
        yield ceiling / 2 + rng() * ceiling / 2
        ceiling = min(cap, ceiling * 2)


class OutageLog:
    """One kind of call to the registry (join, watch, report): logs its outage once when it
    starts (`started: <error>`) and once when it ends (`ended`), and paces the retries."""

    def __init__(
        self,
        started: str,
        ended: str | None = None,
        *,
        delays: Callable[[], Iterator[float]] = backoff_delays,
    ) -> None:
        self.started = started
        self.ended = ended
        self._new_delays = delays
        self._delays: Iterator[float] | None = None  # set while the outage lasts

    @property
    def down(self) -> bool:
        return self._delays is not None

    def failed(self, exc: Exception) -> float:
        """The call failed: log it if this starts an outage; the delay before the retry."""
        if self._delays is None:
            log.warning("%s: %s", self.started, exc)
            self._delays = self._new_delays()
        return next(self._delays)

    def recovered(self) -> None:
        """The call worked: log the end of the outage, if there was one."""
        if self._delays is None:
            return
        self._delays = None
        if self.ended:
            log.info("%s", self.ended)


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    """Wait `delay` seconds, or less when `stop` is set meanwhile."""
    await wait_until_set(stop, delay)


async def wait_until_set(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` was set within `timeout` seconds.

    Not `asyncio.wait_for(event.wait(), timeout)`: on Python 3.11 it can swallow a
    cancellation that arrives as its timeout fires, and a loop built on it then runs on
    after its task was cancelled (an agent stopping on an error never finished stopping).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
