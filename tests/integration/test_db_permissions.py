"""The registry's SQLite database and its side files are 0600 wherever the registry creates
them (token hashes, config secrets and TLS keys live there), whatever the umask."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from controller.store.db import Database
from controller.store.tokens import issue_token

NOBODY = 65534


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_new_database_and_its_wal_are_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db = Database(f"sqlite:///{tmp_path / 'reg' / 'registry.db'}")
        db.prepare(migrate=True)
        with db.write() as session:
            issue_token(session, "admin")
        files = sorted(p.name for p in (tmp_path / "reg").iterdir())
        assert {"registry.db", "registry.db-wal", "registry.db-shm"} <= set(files)
        for name in files:
            assert _mode(tmp_path / "reg" / name) == 0o600, name
        db.dispose()
    finally:
        os.umask(old)


def test_an_older_world_readable_database_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    db = Database(f"sqlite:///{path}")
    db.prepare(migrate=True)
    db.dispose()
    for suffix in ("", "-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, 0o644)
    again = Database(f"sqlite:///{path}")
    with again.read():
        pass
    for suffix in ("", "-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            assert _mode(side) == 0o600, side
    again.dispose()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as nobody")
def test_nobody_cannot_read_the_database(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    db.prepare(migrate=True)
    with db.write() as session:
        issue_token(session, "admin")
    for name in ("registry.db", "registry.db-wal"):
        done = subprocess.run(
            ["/usr/bin/cat", str(tmp_path / name)],
            user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, timeout=30,
        )  # fmt: skip
        assert done.returncode != 0 and b"Permission denied" in done.stderr, name
    db.dispose()
