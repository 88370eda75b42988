"""Who runs the scheduling loops: exactly one registry replica at a time.

Deadline ticks, heartbeat TTL sweeps and ACME renewal decide things for the whole cluster;
with several replicas on one PostgreSQL only the holder of a session-level advisory lock runs
them. The lock lives on a dedicated connection: when that replica dies (even SIGKILL)
PostgreSQL drops its connection and the lock, and another replica takes it within
`POLL_S`. A replica that loses its connection stops calling itself leader at once.

Use `ctx.leader.is_leader()` at each tick of a background loop. On SQLite there is one process,
always the leader.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # psycopg is loaded only when a replica runs on PostgreSQL
    import psycopg

log = logging.getLogger("paas.registry")

LOCK_KEY = 0x70AA5  # pg_advisory_lock key of the paas registry's scheduler
POLL_S = 1.0


class Leader(Protocol):
    def is_leader(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class AlwaysLeader:
    """The embedded SQLite registry: one process, so it decides everything."""

    def is_leader(self) -> bool:
        return True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class AdvisoryLockLeader:
    """Leader while holding `pg_try_advisory_lock(LOCK_KEY)` on its own connection."""

    def __init__(self, url: str) -> None:
        from controller.store.pgconn import KeptConnection

        self._leader = threading.Event()
        self._keeper = KeptConnection(url, "leader", self._hold, on_lost=self._leader.clear)

    def is_leader(self) -> bool:
        return self._leader.is_set()

    def start(self) -> None:
        self._keeper.start()

    def stop(self) -> None:
        self._keeper.stop()
        self._leader.clear()

    def _hold(self, conn: psycopg.Connection) -> None:
        """Try for the lock until it is ours, then check the connection every POLL_S."""
        while not self._keeper.stopping.is_set():
            if self._leader.is_set():
                conn.execute("SELECT 1")
            else:
                got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
                if got and got[0]:
                    log.info("this registry replica is now the leader (runs the schedulers)")
                    self._leader.set()
            self._keeper.stopping.wait(POLL_S)


def leader_for(db_url: str, *, postgres: bool) -> Leader:
    return AdvisoryLockLeader(db_url) if postgres else AlwaysLeader()
