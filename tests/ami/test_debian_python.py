"""The image runs the agent on Debian 12's Python 3.11.2, whose tarfile has no extraction
filters (3.11.4+): unpacking must stay as strict without them. (The image test unpacks a
real artifact with that Python; this one feeds it a hostile archive.)"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from agent import archive
from agent.errors import UnsafeArchive


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _file(name: str, *, mode: int, uid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.uname, info.gname = mode, uid, uid, "x", "x"
    return info


@pytest.fixture(autouse=True)
def _python_without_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    monkeypatch.delattr(tarfile, "FilterError", raising=False)


def test_no_set_id_bits_no_foreign_owner_no_group_write(tmp_path: Path) -> None:
    source = _archive(
        tmp_path / "a.tar.gz",
        [(_file("run.sh", mode=0o6777, uid=1234), b"#!/bin/sh\n"), (_file("ro", mode=0o400), b"x")],
    )
    out = archive.unpack(source, tmp_path / "out")
    run = (out / "run.sh").stat()
    assert stat.S_IMODE(run.st_mode) == 0o755  # no setuid/setgid, no group/other write
    assert (run.st_uid, run.st_gid) == (os.getuid(), os.getgid())
    assert stat.S_IMODE((out / "ro").stat().st_mode) == 0o600  # the owner can still read it


def test_escaping_members_are_still_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("evil")
    link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
    source = _archive(tmp_path / "b.tar.gz", [(link, b"")])
    with pytest.raises(UnsafeArchive, match="links outside the tree"):
        archive.unpack(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
