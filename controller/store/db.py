"""Engine, sessions and the revision counter.

Every mutation goes through `Database.write()`: one transaction, and the watchers are woken
only after the commit. Writes are serialised so read-modify-write steps such as "next release
version" stay race-free: by an in-process lock (SQLite has a single writer anyway) and, on
PostgreSQL where several registry replicas write, by locking the one revision row
(`SELECT ... FOR UPDATE`) first in every write transaction. The same transaction sends
`NOTIFY paas_revision` when it bumped the revision, so watchers on every replica wake.

SQLite runs in WAL mode: a commit is one append to the write-ahead log, so a registry killed
at any moment (even SIGKILL) reopens at its last committed transaction, never half of one.

The schema comes from the alembic revisions (controller/store/schema.py), never from `create_all`.

The SQLite file holds every token hash (a host token's hash is its agent API's credential),
config secrets and TLS keys: it is created 0600 before SQLite opens it (SQLite gives its
-wal, -shm and -journal files the database file's mode), and an older 0644 one is narrowed
on open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from controller.store import schema_head
from controller.store.models import Instance, Revision

log = logging.getLogger("paas.registry")

_BUMPED = "paas_bumped"
NOTIFY_CHANNEL = "paas_revision"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def private_sqlite_file(database: str) -> None:
    """Create the database file 0600 if missing; narrow it and its side files to 0600."""
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if side.stat().st_mode & 0o077:
                os.chmod(side, 0o600)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and "mode=memory" not in url:
            private_sqlite_file(parsed.database)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Database:
    def __init__(self, url: str, *, on_commit: Callable[[], None] | None = None) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()
        self.on_commit = on_commit

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def prepare(self, *, migrate: bool) -> None:
        """Check the database, then migrate it to head (`migrate`) or refuse pending revisions."""
        check_integrity(self.engine)
        if schema_head.at_head(self.engine):
            return
        from controller.store import schema  # alembic: only when the database is not at head

        missing = schema.pending(self.engine)  # raises SchemaTooNew for a newer database
        if migrate:
            if missing:
                schema.upgrade(self.engine)
            return
        if missing:
            raise PendingMigrations(
                f"the registry database {self.engine.url.render_as_string()} lacks"
                f" {len(missing)} schema revision(s) ({', '.join(missing)}):"
                " run 'paas-registry migrate' first"
            )

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction; watchers are woken after it commits if it bumped the revision."""
        with self._write_lock, self._sessions() as session, session.begin():
            if self.is_postgres:  # serialise writers of every replica, see the docstring
                session.execute(text("SELECT seq FROM revision WHERE id = 1 FOR UPDATE"))
            yield session
            bumped = session.info.get(_BUMPED, False)
            if bumped and self.is_postgres:
                seq = revision(session).seq
                session.execute(
                    text("SELECT pg_notify(:channel, :seq)"),
                    {"channel": NOTIFY_CHANNEL, "seq": str(seq)},
                )
        if bumped and self.on_commit is not None:
            self.on_commit()


class DatabaseCorrupt(RuntimeError):
    """SQLite's own check found damage; the registry refuses to start on it."""


class PendingMigrations(RuntimeError):
    """The database is behind the code's schema; `paas-registry migrate` brings it up."""


def check_integrity(engine: Engine) -> None:
    """SQLite: `PRAGMA quick_check` must say ok and the journal must be WAL."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        problems = [row[0] for row in conn.execute(text("PRAGMA quick_check"))]
        mode = conn.execute(text("PRAGMA journal_mode")).scalar_one()
    if problems != ["ok"]:
        raise DatabaseCorrupt(
            f"the registry database {engine.url.database} is damaged: " + "; ".join(problems[:5])
        )
    if engine.url.database not in (None, "", ":memory:") and str(mode).lower() != "wal":
        raise DatabaseCorrupt(f"the registry database is in {mode} mode, expected wal")


def revision(session: Session) -> Revision:
    row = session.execute(select(Revision).where(Revision.id == 1)).scalar_one()
    return row


def next_instance_id(session: Session) -> int:
    """A new instance id, never one used before (SQLite would reuse a deleted max rowid)."""
    row = revision(session)
    top = session.execute(select(func.max(Instance.id))).scalar_one_or_none() or 0
    row.instance_seq = max(row.instance_seq or 0, top) + 1
    return row.instance_seq


def bump(session: Session, *, desired: bool) -> int:
    """Advance `seq` (and `desired_seq` when agents must act); returns the new `seq`."""
    row = revision(session)
    row.seq += 1
    if desired:
        row.desired_seq = row.seq
    session.info[_BUMPED] = True
    session.flush()
    return row.seq
