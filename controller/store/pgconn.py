"""Dedicated PostgreSQL connections kept open by a background thread (LISTEN, advisory lock).

Both the watch notifier and the leader lease need a connection of their own that outlives any
transaction, and both must survive PostgreSQL restarts: `KeptConnection` runs `session(conn)`
on a fresh autocommit connection and reconnects (with backoff) whenever it fails.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger("paas.registry")

RETRY_S = (0.2, 0.5, 1.0, 2.0)


def libpq_url(sqlalchemy_url: str) -> str:
    """`postgresql+psycopg://u:p@h:1/db` -> `postgresql://u:p@h:1/db` for psycopg itself."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class KeptConnection:
    """Runs `session(conn)` in a daemon thread; after it raises, reconnects and runs it again."""

    def __init__(
        self,
        url: str,
        name: str,
        session: Callable[[psycopg.Connection], None],
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._url = libpq_url(url)
        self._name = name
        self._session = session
        self._on_lost = on_lost
        self.stopping = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._thread = threading.Thread(target=self._run, name=f"paas-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # already gone
                conn.cancel_safe(timeout=1)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=f"paas-{self._name}",
                ) as conn:
                    self._conn = conn
                    failures = 0
                    self._session(conn)
            except Exception as exc:
                if self.stopping.is_set():
                    break
                log.warning("%s: PostgreSQL connection lost (%s); reconnecting", self._name, exc)
            finally:
                self._conn = None
                if self._on_lost is not None:
                    self._on_lost()
            self.stopping.wait(RETRY_S[min(failures, len(RETRY_S) - 1)])
            failures += 1
