"""Blocking queries: answer at once if the revision is past the client's index, else wait.

The notifier is an interface: `LocalNotifier` wakes the watches of one registry process (SQLite),
`PgNotifier` also wakes them when another replica commits (PostgreSQL LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool

from controller.errors import Invalid

MAX_WAIT_S = 300.0
DEFAULT_WAIT_S = 30.0
_WAIT_RE = re.compile(r"^(\d{1,9})(ms|s|m)?$")


def parse_wait(text: str | None) -> float:
    """`30s`, `500ms`, `2m` or plain seconds -> seconds, capped at 300 s."""
    if text is None or text == "":
        return DEFAULT_WAIT_S
    match = _WAIT_RE.fullmatch(text.strip())
    if match is None:
        raise Invalid(f"invalid wait {text!r}: use a duration such as '30s' or '500ms'")
    number, unit = int(match.group(1)), match.group(2) or "s"
    seconds = {"ms": number / 1000, "s": float(number), "m": number * 60.0}[unit]
    return min(seconds, MAX_WAIT_S)


class Notifier(Protocol):
    closed: bool  # the process is shutting down: watches answer now instead of waiting

    def notify(self) -> None: ...

    def close(self) -> None: ...

    def subscribe(self) -> asyncio.Future[None]: ...

    def unsubscribe(self, waiter: asyncio.Future[None]) -> None: ...


class LocalNotifier:
    """Wakes every waiting watch in this process; `notify` is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[asyncio.Future[None]] = set()
        self.closed = False

    def close(self) -> None:
        """At shutdown: every watch answers with the current revision at once, so the server
        stops without waiting out (and then cancelling) long polls; agents simply re-watch."""
        self.closed = True
        self.notify()

    def subscribe(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.add(waiter)
        return waiter

    def unsubscribe(self, waiter: asyncio.Future[None]) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def notify(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            loop = waiter.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, waiter)


class PgNotifier(LocalNotifier):
    """Wakes this process's watches on `NOTIFY paas_revision` from any replica.

    `Database.write` sends the NOTIFY in the same transaction as the revision bump, so it is
    delivered exactly when the change is visible. One LISTEN connection per process, kept open
    and reconnected; every (re)connection wakes all watches, which re-read the revision, so a
    notification lost while disconnected costs nothing but a re-read.
    """

    def __init__(self, db_url: str) -> None:
        super().__init__()
        from controller.store.pgconn import KeptConnection

        self._keeper = KeptConnection(db_url, "listen", self._listen, on_lost=self.notify)

    def start(self) -> None:
        self._keeper.start()

    def stop(self) -> None:
        self._keeper.stop()

    def _listen(self, conn: Any) -> None:
        from controller.store.db import NOTIFY_CHANNEL

        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        self.notify()  # anything committed while we were not listening
        while not self._keeper.stopping.is_set():
            for _ in conn.notifies(timeout=1.0):
                self.notify()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def wait_past(
    index: int,
    read: Callable[[], int],
    *,
    notifier: Notifier,
    wait_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Return the current revision once it is past `index`, or when `wait_s` runs out.

    A revision below `index` (the registry's state was reset) also answers at once.

    `read` is a blocking DB read, run in a thread. The waiter is registered before each read
    so a commit between the read and the wait is never missed.
    """
    deadline = clock() + wait_s
    while True:
        waiter = notifier.subscribe()
        try:
            current = await run_in_threadpool(read)
            remaining = deadline - clock()
            if index <= 0 or current != index or remaining <= 0 or notifier.closed:
                return current
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout=remaining)
            except TimeoutError:
                return await run_in_threadpool(read)
            if notifier.closed:
                return await run_in_threadpool(read)
        finally:
            notifier.unsubscribe(waiter)
