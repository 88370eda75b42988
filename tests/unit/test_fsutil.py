"""common.fsutil.atomic_write: exact mode whatever the umask, no temp file left, an
existing file kept when asked not to replace, and a planted link never followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.fsutil import atomic_write


def test_writes_text_and_bytes_with_exact_mode(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "sub" / "a.conf", "hello\n")
        atomic_write(tmp_path / "b.key", b"\x00secret", mode=0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "a.conf").read_text() == "hello\n"
    assert (tmp_path / "sub" / "a.conf").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.key").read_bytes() == b"\x00secret"
    assert (tmp_path / "b.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.key", "sub"]


def test_replaces_and_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old")
    path.chmod(0o644)
    atomic_write(path, "new", mode=0o600, fsync=False)
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o600


def test_no_replace_keeps_the_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    atomic_write(path, b"first", mode=0o600, replace=False)
    with pytest.raises(FileExistsError):
        atomic_write(path, b"second", mode=0o600, replace=False)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_a_link_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    link = tmp_path / "state.json"
    link.symlink_to(victim)
    atomic_write(link, "{}", mode=0o600)
    assert victim.read_text() == "untouched"
    assert not link.is_symlink() and link.read_text() == "{}"
