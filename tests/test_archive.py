"""Hostile tarballs are refused and write nothing outside (or inside) the target."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agent.archive import unpack
from agent.errors import UnsafeArchive


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_plain_archive_unpacks(tmp_path: Path) -> None:
    info_dir = tarfile.TarInfo("pkg")
    info_dir.type = tarfile.DIRTYPE
    archive = _tar(
        tmp_path / "ok.tar.gz",
        [
            _file("Procfile", b"web: python app.py\n"),
            (info_dir, None),
            _file("pkg/mod.py", b"X = 1\n"),
            _link("pkg/alias.py", "mod.py", tarfile.SYMTYPE),
            _link("copy.py", "pkg/mod.py", tarfile.LNKTYPE),
        ],
    )
    dest = unpack(archive, tmp_path / "out")
    assert (dest / "Procfile").read_text() == "web: python app.py\n"
    assert (dest / "pkg" / "alias.py").read_text() == "X = 1\n"
    assert (dest / "copy.py").read_text() == "X = 1\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("../escape.txt"), "'..'"),
        (_file("a/../../escape.txt"), "'..'"),
        (_file("/tmp/absolute-escape.txt"), "absolute"),
        (_link("passwd", "/etc/passwd", tarfile.SYMTYPE), "absolute"),
        (_link("up", "../../escape.txt", tarfile.SYMTYPE), "outside"),
        (_link("sub/up", "../../x", tarfile.SYMTYPE), "outside"),
        (_link("hard", "/etc/passwd", tarfile.LNKTYPE), "absolute"),
        (_link("hard", "../outside", tarfile.LNKTYPE), "outside"),
        (_link("dev", "", tarfile.CHRTYPE), "device"),
        (_link("blk", "", tarfile.BLKTYPE), "device"),
        (_link("fifo", "", tarfile.FIFOTYPE), "device"),
    ],
)
def test_hostile_archive_is_refused(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar(tmp_path / "bad.tar.gz", [_file("Procfile"), member])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchive, match=message):
        unpack(archive, work / "out")
    assert not (work / "out").exists()
    assert list(work.iterdir()) == []  # no temp folder left behind either
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/absolute-escape.txt").exists()


def test_absurd_size_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "big.tar.gz", [_file("a", b"0" * 2000), _file("b", b"0" * 2000)])
    with pytest.raises(UnsafeArchive, match="more than"):
        unpack(archive, tmp_path / "out", max_total_bytes=3000)
    assert not (tmp_path / "out").exists()


def test_not_a_tarball_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "junk.tar.gz"
    bad.write_bytes(b"this is not a tarball")
    with pytest.raises(UnsafeArchive, match="could not be read"):
        unpack(bad, tmp_path / "out")
