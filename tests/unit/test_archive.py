"""Hostile tarballs are refused and write nothing outside (or inside) the target; normal
artifacts unpack as before. The same corpus runs on Debian's own Python in
tests/system/ami/test_debian_python.py."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from agent.errors import UnsafeArchive
from agent.machine.build.archive import check_link_target, entry_parts, unpack
from cli.pack import pack
from tests.support.archive_corpus import (
    CASES,
    Case,
    gzip_of_tar,
    listing,
    prepare,
    reference_unpack,
    sample_apps,
    tree_of,
)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_archive_is_refused(tmp_path: Path, case: Case) -> None:
    archive, dest, sentinel = prepare(case, tmp_path)
    before = listing(sentinel)
    with pytest.raises(UnsafeArchive, match=case.message):
        unpack(archive, dest, **case.limits)
    assert listing(sentinel) == before  # nothing outside, no temp folder, no dest
    assert not dest.exists()


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path.write_bytes(gzip_of_tar(members))
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
    root = tarfile.TarInfo(".")
    root.type = tarfile.DIRTYPE
    archive = _tar(
        tmp_path / "ok.tar.gz",
        [
            (root, None),
            _file("./Procfile", b"web: python app.py\n"),
            (info_dir, None),
            _file("pkg/mod.py", b"X = 1\n"),
            _link("pkg/alias.py", "mod.py", tarfile.SYMTYPE),
            _link("pkg/up", "..", tarfile.SYMTYPE),
            _link("pkg/deep/top", "../../Procfile", tarfile.SYMTYPE),
            _link("copy.py", "pkg/mod.py", tarfile.LNKTYPE),
        ],
    )
    dest = unpack(archive, tmp_path / "out")
    assert (dest / "Procfile").read_text() == "web: python app.py\n"
    assert (dest / "pkg" / "alias.py").read_text() == "X = 1\n"
    assert (dest / "pkg" / "up" / "Procfile").read_text() == "web: python app.py\n"
    assert (dest / "pkg" / "deep" / "top").read_text() == "web: python app.py\n"
    copy = dest / "copy.py"
    assert copy.read_text() == "X = 1\n" and not copy.is_symlink()
    assert copy.stat().st_ino != (dest / "pkg" / "mod.py").stat().st_ino  # a copy, not a link
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_requirements_link_to_shadow_is_refused_at_unpack(tmp_path: Path) -> None:
    """The installer reads requirements.txt as root: a link to /etc/shadow never gets there."""
    for target in ["/etc/shadow", "../../../../../../../../etc/shadow"]:
        archive = _tar(
            tmp_path / "r.tar.gz",
            [_file("Procfile"), _link("requirements.txt", target, tarfile.SYMTYPE)],
        )
        with pytest.raises(UnsafeArchive, match=r"requirements\.txt"):
            unpack(archive, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_absurd_size_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "big.tar.gz", [_file("a", b"0" * 2000), _file("b", b"0" * 2000)])
    with pytest.raises(UnsafeArchive, match="more than 3000 bytes"):
        unpack(archive, tmp_path / "out", max_total_bytes=3000)
    assert not (tmp_path / "out").exists()


def test_hard_link_copies_count_towards_the_total(tmp_path: Path) -> None:
    """Forty hard links to one 1 kB file may not unpack to 40 kB past a 10 kB limit."""
    members = [_file("a", b"0" * 1000)]
    members += [_link(f"h{n}", "a", tarfile.LNKTYPE) for n in range(40)]
    archive = _tar(tmp_path / "links.tar.gz", members)
    with pytest.raises(UnsafeArchive, match="hard link, unpacked as a copy"):
        unpack(archive, tmp_path / "out", max_total_bytes=10_000)
    assert list(tmp_path.iterdir()) == [archive]


def test_not_a_tarball_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "junk.tar.gz"
    bad.write_bytes(b"this is not a tarball")
    with pytest.raises(UnsafeArchive, match="could not be read"):
        unpack(bad, tmp_path / "out")
    truncated = tmp_path / "cut.tar.gz"
    whole = gzip_of_tar([_file("a", os.urandom(50_000))])
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UnsafeArchive, match="could not be read"):
        unpack(truncated, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tar.gz", "junk.tar.gz"]


@pytest.mark.parametrize(
    ("folder", "target", "allowed"),
    [
        ((), "Procfile", True),
        (("a", "b"), "../../x", True),
        (("a", "b"), "../..", True),
        (("a", "b"), "./../c/./d", True),
        (("a",), "../..", False),
        (("a",), "x/../y", False),  # climbs from wherever x points
        (("a",), "/etc", False),
        (("a",), "", False),
    ],
)
def test_link_target_rule(folder: tuple[str, ...], target: str, allowed: bool) -> None:
    if allowed:
        check_link_target("l", folder, target)
    else:
        with pytest.raises(UnsafeArchive):
            check_link_target("l", folder, target)


def test_entry_parts() -> None:
    assert entry_parts("./a//b/./c/") == ("a", "b", "c")
    for bad in ["/a", "a/../b", "..", "a\x00"]:
        with pytest.raises(UnsafeArchive):
            entry_parts(bad)


def test_packed_apps_unpack_identically(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the filter leaves folders at the umask's mode
    try:
        for source in sample_apps(tmp_path):
            packed = pack(source, workdir=tmp_path)
            ours = unpack(packed.path, tmp_path / "ours" / source.name)
            reference_unpack(packed.path, tmp_path / "reference" / source.name)
            assert tree_of(ours) == tree_of(tmp_path / "reference" / source.name), source.name
            assert len(tree_of(ours)) >= 3
    finally:
        os.umask(old_umask)


def test_names_the_os_refuses_are_a_clear_refusal(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "long.tar.gz", [_file("a" * 300)])
    with pytest.raises(UnsafeArchive, match=r"could not be unpacked: .*File name too long"):
        unpack(archive, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [archive]


def test_one_member_may_fill_a_larger_release(tmp_path: Path) -> None:
    """An operator who allows bigger releases (agent setting release_max_mb) allows bigger
    files too; a per-file cap is the caller's choice."""
    archive = _tar(tmp_path / "one.tar.gz", [_file("blob", b"0" * 5000)])
    assert (unpack(archive, tmp_path / "a", max_total_bytes=6000) / "blob").stat().st_size == 5000
    with pytest.raises(UnsafeArchive, match="5000 bytes, more than the limit of 4000 bytes"):
        unpack(archive, tmp_path / "b", max_total_bytes=6000, max_member_bytes=4000)
