"""The image runs the agent on Debian 12's Python 3.11.2, whose tarfile has no extraction
filters (3.11.4+): unpacking must be as strict there. The hostile corpus of
tests/support/archive_corpus.py runs here under the real /usr/bin/python3 (a subprocess, `-I`: no
venv, no site-packages), where the old fallback let a symlink chain write four folders above
the release; the first tests below also pretend, in-process, that the filters are missing."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from agent.errors import UnsafeArchive
from agent.machine.build import archive
from cli.pack import pack
from tests.support.archive_corpus import (
    CASES,
    DEBIAN_PYTHON,
    REPO,
    Case,
    listing,
    many_members_targz,
    prepare,
    reference_unpack,
    run_on_debian_python,
    sample_apps,
    tree_of,
)

# One xdist worker runs the corpus once for every case (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("ami-debian-python")

needs_debian_python = pytest.mark.skipif(
    not DEBIAN_PYTHON.exists(),
    reason=f"{DEBIAN_PYTHON} (Debian 12's own Python 3.11.2, the host image's) is not installed",
)


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


@pytest.fixture
def _python_without_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    monkeypatch.delattr(tarfile, "FilterError", raising=False)


@pytest.mark.usefixtures("_python_without_filters")
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


@pytest.mark.usefixtures("_python_without_filters")
def test_escaping_members_are_still_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("evil")
    link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
    source = _archive(tmp_path / "b.tar.gz", [(link, b"")])
    with pytest.raises(UnsafeArchive, match="links outside the tree"):
        archive.unpack(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def debian_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every corpus case unpacked by one /usr/bin/python3 process; per case: its result and
    the sentinel listing before and after."""
    if not DEBIAN_PYTHON.exists():
        pytest.skip(f"{DEBIAN_PYTHON} (Debian 12's own Python 3.11.2) is not installed")
    work = tmp_path_factory.mktemp("debian-corpus")
    jobs, prepared = [], {}
    for case in CASES:
        archive_path, dest, sentinel = prepare(case, work / case.id)
        prepared[case.id] = (dest, sentinel, listing(sentinel))
        jobs.append({"archive": str(archive_path), "dest": str(dest), "limits": case.limits})
    run = run_on_debian_python(jobs, work)
    assert run["version"].startswith("3.")
    outcome = {}
    for case, result in zip(CASES, run["results"], strict=True):
        dest, sentinel, before = prepared[case.id]
        outcome[case.id] = {
            **result,
            "python": run["version"],
            "before": before,
            "after": listing(sentinel),
            "dest_exists": dest.exists(),
        }
    return outcome


@needs_debian_python
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_archive_is_refused_on_debian_python(
    debian_run: dict[str, dict[str, Any]], case: Case
) -> None:
    result = debian_run[case.id]
    assert result["refused"], f"{case.id} was unpacked by Python {result['python']}"
    assert re.search(case.message, result["message"]), result["message"]
    assert result["after"] == result["before"]  # nothing outside, no temp folder, no dest
    assert not result["dest_exists"]


@needs_debian_python
def test_packed_apps_unpack_identically_on_debian_python(tmp_path: Path) -> None:
    """The examples/ apps (and one with links and an executable), packed by cli/pack.py and
    unpacked by Debian's Python, equal what the venv's tarfile with the "data" filter makes."""
    jobs, expected = [], {}
    old_umask = os.umask(0o022)  # the filter leaves folders at the umask's mode
    try:
        for source in sample_apps(tmp_path):
            packed = pack(source, workdir=tmp_path)
            reference = tmp_path / "reference" / source.name
            reference_unpack(packed.path, reference)
            dest = tmp_path / "ours" / source.name
            jobs.append({"archive": str(packed.path), "dest": str(dest), "limits": {}})
            expected[source.name] = (reference, dest)
    finally:
        os.umask(old_umask)
    run = run_on_debian_python(jobs, tmp_path)
    assert run["version"].startswith("3.11.2"), run["version"]
    assert not any(result["refused"] for result in run["results"]), run["results"]
    for name, (reference, dest) in expected.items():
        assert tree_of(dest) == tree_of(reference), name
    assert (tmp_path / "ours" / "linked-app" / "pkg" / "sub" / "top").is_symlink()


PEAK_RSS = """
import resource, subprocess, sys
subprocess.run([sys.executable, "-I", "-c", sys.argv[1], *sys.argv[2:]], check=False)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""
UNPACK = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from agent.machine.build.archive import unpack
from agent.errors import UnsafeArchive
try:
    unpack(Path(sys.argv[2]), Path(sys.argv[3]))
except UnsafeArchive as exc:
    print("refused:", exc, file=sys.stderr)
"""


def _peak_rss_kib(code: str, *args: str) -> tuple[int, str]:
    """Peak RSS of a child of a fresh wrapper (RUSAGE_CHILDREN of this test process would
    also count every child pytest ran before)."""
    done = subprocess.run(
        [str(DEBIAN_PYTHON), "-I", "-c", PEAK_RSS, code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(done.stdout.strip()), done.stderr


@needs_debian_python
def test_half_a_million_members_are_refused_early_with_bounded_memory(tmp_path: Path) -> None:
    """500,000 empty files (4.7 MB of .tar.gz). Loading their headers (getmembers(), which
    the old code did before counting) peaks at about 240 MB on this Python; streaming stops
    at entry 20,001. Measured: ~28 MB peak against ~11 MB for a bare interpreter, < 1 s."""
    many = many_members_targz(tmp_path / "many.tar.gz", 500_000)
    bare, _ = _peak_rss_kib("import gzip, tarfile, pathlib")
    started = time.monotonic()
    peak, stderr = _peak_rss_kib(UNPACK, str(REPO), str(many), str(tmp_path / "out" / "release"))
    elapsed = time.monotonic() - started
    assert "refused: archive refused: archive has more than 20000 entries" in stderr, stderr
    assert peak - bare < 60 * 1024, (peak, bare)  # KiB: a quarter of what loading them costs
    assert elapsed < 30, elapsed  # generous: a shared 2-core machine
    assert list((tmp_path / "out").iterdir()) == []  # the 20,000 files made are gone
