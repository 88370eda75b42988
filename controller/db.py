"""Engine, sessions and the revision counter.

Every mutation goes through `Database.write()`: one transaction, serialised by an in-process
lock (SQLite has a single writer anyway, and it keeps read-modify-write steps such as
"next release version" race-free), and the watchers are woken only after the commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from controller.models import Base, Revision

_BUMPED = "paas_bumped"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
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

    def create_all(self) -> None:
        Base.metadata.create_all(self.engine)
        with self.write() as session:
            if session.get(Revision, 1) is None:
                session.add(Revision(id=1, seq=0, desired_seq=0))

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction; watchers are woken after it commits if it bumped the revision."""
        with self._write_lock, self._sessions() as session:
            with session.begin():
                yield session
            bumped = session.info.get(_BUMPED, False)
        if bumped and self.on_commit is not None:
            self.on_commit()


def revision(session: Session) -> Revision:
    row = session.execute(select(Revision).where(Revision.id == 1)).scalar_one()
    return row


def bump(session: Session, *, desired: bool) -> int:
    """Advance `seq` (and `desired_seq` when agents must act); returns the new `seq`."""
    row = revision(session)
    row.seq += 1
    if desired:
        row.desired_seq = row.seq
    session.info[_BUMPED] = True
    session.flush()
    return row.seq
