"""PostgreSQL LISTEN/NOTIFY and the advisory-lock leader, against a real server, including
PostgreSQL dropping their connections (they reconnect and carry on)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest

from controller.store.db import Database, bump
from controller.sync.leader import AdvisoryLockLeader
from controller.sync.watch import PgNotifier
from tests.support.pg import PgServer


@pytest.fixture
def url(postgres: PgServer) -> Iterator[str]:
    made = postgres.new_database("notify")
    db = Database(made)
    db.prepare(migrate=True)
    db.dispose()
    yield made


def _terminate(server: PgServer, application: str) -> int:
    with psycopg.connect(
        f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres", autocommit=True
    ) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application,),
        ).fetchall()
    return len(rows)


def _change(db: Database) -> None:
    with db.write() as session:
        bump(session, desired=True)


def _until(check, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_notify_wakes_across_processes_and_after_a_dropped_connection(
    url: str, postgres: PgServer
) -> None:
    other_replica = Database(url)  # commits with no local notifier: only NOTIFY can wake us
    notifier = PgNotifier(url)
    notifier.start()

    async def woken_by_change() -> float:
        waiter = notifier.subscribe()
        try:
            started = time.monotonic()
            await asyncio.to_thread(_change, other_replica)
            await asyncio.wait_for(asyncio.shield(waiter), timeout=2)
            return time.monotonic() - started
        finally:
            notifier.unsubscribe(waiter)

    try:
        assert _until(lambda: _count(postgres, "paas-listen") == 1)
        time.sleep(0.3)  # LISTEN in place
        assert asyncio.run(woken_by_change()) < 1.0
        assert _terminate(postgres, "paas-listen") == 1
        assert _until(lambda: _count(postgres, "paas-listen") == 1)
        time.sleep(0.3)
        assert asyncio.run(woken_by_change()) < 1.0
    finally:
        notifier.stop()
        other_replica.dispose()


def _count(server: PgServer, application: str) -> int:
    with psycopg.connect(
        f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres", autocommit=True
    ) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_exactly_one_leader_and_takeover_when_its_connection_drops(
    url: str, postgres: PgServer
) -> None:
    first, second = AdvisoryLockLeader(url), AdvisoryLockLeader(url)
    first.start()
    try:
        assert _until(first.is_leader)
        second.start()
        time.sleep(1.5)
        assert first.is_leader() and not second.is_leader()
        _terminate(postgres, "paas-leader")  # both connections drop; one of them wins again
        assert _until(lambda: first.is_leader() != second.is_leader())
        time.sleep(1.5)
        assert [first.is_leader(), second.is_leader()].count(True) == 1
        winner = first if first.is_leader() else second
        winner.stop()  # closes its connection: the lock goes to the other one
        loser = second if winner is first else first
        assert _until(loser.is_leader)
    finally:
        first.stop()
        second.stop()
