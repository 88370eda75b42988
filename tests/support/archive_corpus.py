"""Hostile artifacts for agent/machine/build/archive.py, shared by the in-process tests (the
venv's Python)
and the subprocess tests on Debian 12's own /usr/bin/python3 (3.11.2, no tarfile filters).

Each case builds its archive in its own folder:

    <case>/archive.tar.gz
    <case>/sentinel/1/2/3/4/5/6/7/8/9/10/release   <- the destination

so any escape that climbs up to ten folders, and every absolute path the cases aim at, lands
inside `sentinel/`, whose recursive listing is compared before and after.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = Path("/usr/bin/python3")
DEPTH = 10
MiB = 1 << 20
ZERO_MIB = bytes(MiB)


@dataclass(frozen=True)
class Zeros:
    """`size` zero bytes, stored as repeated pre-compressed deflate blocks: a 1 GiB member
    costs 1 MB on disk and no time to build (a real gzip bomb)."""

    size: int


Piece = bytes | Zeros


def tar_header(info: tarfile.TarInfo, *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")


def padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


class TarGz:
    """A .tar.gz built piece by piece (headers, data, padding) in memory; `copy()` forks it,
    so variants that share a long prefix cost that prefix once."""

    _zero_block = b""

    def __init__(self) -> None:
        if not TarGz._zero_block:
            zeros = zlib.compressobj(6, zlib.DEFLATED, -15)
            TarGz._zero_block = zeros.compress(ZERO_MIB) + zeros.flush(zlib.Z_FULL_FLUSH)
        self._comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"]
        self._crc = 0
        self._length = 0

    def add(self, *pieces: Piece) -> TarGz:
        for piece in pieces:
            if isinstance(piece, Zeros):
                # Blocks compressed from a reset state, each ending in a full flush, can be
                # repeated as they are: no back-reference crosses them.
                self._out.append(self._comp.flush(zlib.Z_FULL_FLUSH))
                whole, rest = divmod(piece.size, MiB)
                self._out.extend([self._zero_block] * whole)
                for _ in range(whole):
                    self._crc = zlib.crc32(ZERO_MIB, self._crc)
                self._length += whole * MiB
                piece = bytes(rest)
            self._out.append(self._comp.compress(piece))
            self._crc = zlib.crc32(piece, self._crc)
            self._length += len(piece)
        return self

    def copy(self) -> TarGz:
        twin = TarGz.__new__(TarGz)
        twin._comp = self._comp.copy()
        twin._out, twin._crc, twin._length = list(self._out), self._crc, self._length
        return twin

    def finish(self, *, end: bool = True) -> bytes:
        """The archive's bytes: end-of-archive blocks, the deflate end, CRC and length."""
        done = self.copy()
        if end:
            done.add(bytes(2 * tarfile.BLOCKSIZE))
        trailer = done._crc.to_bytes(4, "little") + (done._length & 0xFFFFFFFF).to_bytes(
            4, "little"
        )
        return b"".join([*done._out, done._comp.flush(), trailer])


def write_targz(path: Path, pieces: list[Piece], *, end: bool = True) -> Path:
    """A valid .tar.gz made of raw tar pieces (headers, data, padding)."""
    path.write_bytes(TarGz().add(*pieces).finish(end=end))
    return path


def file(name: str, data: bytes = b"x\n", *, mode: int = 0o644) -> list[Piece]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return [tar_header(info), data, padding(len(data))]


def nul_name() -> list[Piece]:
    """tarfile cuts a ustar name at NUL; a pax `path` record keeps it."""
    info = tarfile.TarInfo("plain")
    info.pax_headers = {"path": "evil\x00/../../ESCAPED"}
    return [tar_header(info), b"", padding(0)]


def big_file(name: str, size: int) -> list[Piece]:
    info = tarfile.TarInfo(name)
    info.size = size
    return [tar_header(info), Zeros(size), padding(size)]


def folder(name: str) -> list[Piece]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return [tar_header(info)]


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> list[Piece]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return [tar_header(info)]


def special(name: str, kind: bytes) -> list[Piece]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = kind, 1, 3
    return [tar_header(info)]


def huge_extended_header(kind: bytes, size: int) -> list[Piece]:
    """A pax / GNU long-name record of `size` zero bytes, before an ordinary member."""
    info = tarfile.TarInfo("././@LongLink" if kind != tarfile.XHDTYPE else "pax")
    info.type, info.size = kind, size
    return [tar_header(info, fmt=tarfile.USTAR_FORMAT), Zeros(size), padding(size), *file("x")]


@dataclass(frozen=True)
class Case:
    id: str
    pieces: Callable[[Path], list[Piece]]  # given the sentinel folder (for absolute paths)
    message: str  # a regex the refusal must match
    limits: dict[str, int] = field(default_factory=dict)


def _chain(sentinel: Path) -> list[Piece]:
    """The reproduced escape: a link to the root, a second link written through the first,
    then a file written through both (3.11.2's fallback wrote it four folders above)."""
    return [
        *link("a/b/c/d/e/up", "../../../../.."),
        *link("a/b/c/d/e/up/a/b/c/d/e/s", "../../../../../../../../.."),
        *file("a/b/c/d/e/up/a/b/c/d/e/s/ESCAPED", b"pwned\n"),
        *file("a/b/c/d/e/up/a/b/c/d/e/s/sentinel/ESCAPED", b"pwned\n"),
    ]


def _climb_through_links(sentinel: Path) -> list[Piece]:
    """Each target looks inside the tree when read as text, but `up/..` climbs from where
    `up` points: ten links reach / and requirements.txt would be /etc/shadow."""
    pieces = [*link("a/up", "..")]
    previous = "up"
    for step in range(DEPTH + 2):
        pieces += link(f"a/o{step}", f"{previous}/..")
        previous = f"o{step}"
    return [*pieces, *link("requirements.txt", f"a/{previous}/etc/shadow")]


CASES: list[Case] = [
    Case("symlink-chain", _chain, "is under 'a/b/c/d/e/up', which is a symlink"),
    Case(
        "symlink-to-folder-then-file",
        lambda s: [*folder("pkg"), *link("alias", "pkg"), *file("alias/evil.py")],
        "is under 'alias', which is a symlink",
    ),
    Case(
        "symlink-to-outside-folder-then-file",
        lambda s: [*link("out", str(s)), *file("out/ESCAPED")],
        "absolute",
    ),
    Case(
        "symlink-replaced-by-folder",
        lambda s: [*link("x", "."), *folder("x"), *file("x/ESCAPED")],
        "would replace the symlink",
    ),
    Case(
        "symlink-replaced-by-file",
        lambda s: [*link("Procfile", "."), *file("Procfile")],
        "would replace the symlink",
    ),
    Case("link-climbs-through-links", _climb_through_links, "'..' after a name"),
    Case(
        "requirements-to-shadow-absolute",
        lambda s: [*file("Procfile"), *link("requirements.txt", "/etc/shadow")],
        "absolute",
    ),
    Case(
        "requirements-to-shadow-relative",
        lambda s: [*link("requirements.txt", "../" * 12 + "etc/shadow")],
        "links outside the tree",
    ),
    Case("symlink-up-one", lambda s: [*link("sub/up", "../../x")], "links outside the tree"),
    Case(
        "hard-link-outside",
        lambda s: [*link("hard", "../../../ESCAPED", tarfile.LNKTYPE)],
        "'..'",
    ),
    Case(
        "hard-link-absolute",
        lambda s: [*link("hard", str(s / "ESCAPED"), tarfile.LNKTYPE)],
        "absolute",
    ),
    Case(
        "hard-link-to-symlink",
        lambda s: [*file("Procfile"), *link("s", "Procfile"), *link("h", "s", tarfile.LNKTYPE)],
        "not an earlier regular file",
    ),
    Case(
        "hard-link-to-later-file",
        lambda s: [*link("h", "Procfile", tarfile.LNKTYPE), *file("Procfile")],
        "not an earlier regular file",
    ),
    Case("absolute-path", lambda s: file(str(s / "ESCAPED")), "absolute"),
    Case("dotdot", lambda s: file("../ESCAPED"), "'..'"),
    Case("dotdot-deep", lambda s: file("a/../../../../ESCAPED"), "'..'"),
    Case("nul-in-name", lambda s: nul_name(), "NUL"),
    Case("symlink-named-dot", lambda s: link(".", "/"), "absolute|no name"),
    Case("duplicate-file", lambda s: [*file("Procfile"), *file("Procfile")], "would replace"),
    Case("file-under-file", lambda s: [*file("Procfile"), *file("Procfile/x")], "is a file"),
    Case("char-device", lambda s: special("dev", tarfile.CHRTYPE), "device"),
    Case("block-device", lambda s: special("blk", tarfile.BLKTYPE), "device"),
    Case("fifo", lambda s: special("fifo", tarfile.FIFOTYPE), "device"),
    Case(
        "too-many-members",
        lambda s: [piece for n in range(51) for piece in file(f"f{n}")],
        "more than 50 entries",
        {"max_members": 50},
    ),
    Case(
        "member-bigger-than-cap",  # 1 GiB of zeros in 1 MB: refused from its header
        lambda s: [*file("Procfile"), *big_file("data.bin", 1 << 30)],
        "is 1073741824 bytes, more than the limit",
    ),
    Case(
        "gzip-bomb-total",  # 5 x 16 MiB in 80 kB: refused at the member that passes 64 MiB
        lambda s: [piece for n in range(5) for piece in big_file(f"z{n}", 16 * MiB)],
        "unpacks to more than 67108864 bytes",
        {"max_total_bytes": 64 * MiB},
    ),
    Case(
        "gzip-bomb-pax-header",
        lambda s: huge_extended_header(tarfile.XHDTYPE, 1 << 30),
        "extended header of 1073741824 bytes",
    ),
    Case(
        "gzip-bomb-long-name",
        lambda s: huge_extended_header(tarfile.GNUTYPE_LONGNAME, 1 << 30),
        "extended header of 1073741824 bytes",
    ),
]


def prepare(case: Case, folder_: Path) -> tuple[Path, Path, Path]:
    """(archive, destination, sentinel) for `case` under `folder_`."""
    sentinel = folder_ / "sentinel"
    parent = sentinel.joinpath(*(str(n) for n in range(1, DEPTH + 1)))
    parent.mkdir(parents=True)
    archive = write_targz(folder_ / "archive.tar.gz", case.pieces(sentinel))
    return archive, parent / "release", sentinel


def listing(root: Path) -> list[tuple[str, str]]:
    """Every path under `root` and what it is, links not followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            found.append((str(path.relative_to(root)), kind))
    return sorted(found)


# Run by Debian's python3 -I: unpack each job, report what happened as JSON on stdout.
RUNNER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from agent.machine.build.archive import unpack
from agent.errors import UnsafeArchive
results = []
for job in json.loads(Path(sys.argv[2]).read_text()):
    try:
        unpack(Path(job["archive"]), Path(job["dest"]), **job["limits"])
        results.append({"refused": False, "message": ""})
    except UnsafeArchive as exc:
        results.append({"refused": True, "message": str(exc)})
print(json.dumps({"version": sys.version, "results": results}))
"""


def run_on_debian_python(jobs: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """Unpack every job with /usr/bin/python3 -I (isolated: no site-packages, no venv)."""
    jobs_file = workdir / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    done = subprocess.run(
        [str(DEBIAN_PYTHON), "-I", "-c", RUNNER, str(REPO), str(jobs_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def gzip_of_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A small .tar.gz built by tarfile itself (for cases that need no crafting)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tree_of(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """path -> (kind, permission bits, content or link target): what 'identical' compares."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            mode = stat.S_IMODE(path.lstat().st_mode)
            if path.is_symlink():
                found[rel] = ("link", 0, os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", mode, "")
            else:
                found[rel] = ("file", mode, path.read_bytes())
    return found


def sample_apps(tmp_path: Path) -> list[Path]:
    """The examples/ apps, and one with what they lack: links inside the tree, an
    executable, nested folders."""
    app = tmp_path / "linked-app"
    (app / "pkg" / "sub").mkdir(parents=True)
    (app / "Procfile").write_text("web: ./run.sh\n")
    (app / "run.sh").write_text("#!/bin/sh\nexec python -m pkg\n")
    (app / "run.sh").chmod(0o755)
    (app / "pkg" / "__main__.py").write_text("print('hi')\n")
    (app / "pkg" / "sub" / "data.txt").write_text("data\n")
    (app / "pkg" / "main.py").symlink_to("__main__.py")
    (app / "pkg" / "sub" / "top").symlink_to("../../Procfile")
    (app / "current").symlink_to("pkg")
    examples = sorted(p for p in (REPO / "examples").iterdir() if (p / "Procfile").is_file())
    return [*examples, app]


def reference_unpack(archive: Path, dest: Path) -> None:
    """What the venv's tarfile (3.11.7, with the "data" filter) makes of it."""
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")


def many_members_targz(path: Path, count: int) -> Path:
    """`count` empty files in a .tar.gz (500k: 4.7 MB, built in 2 s; tarfile takes minutes)."""
    info = tarfile.TarInfo("f0000000")
    info.mode = 0o644
    template = bytearray(tar_header(info, fmt=tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    base = sum(template) - sum(template[0:8])
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip framing
    with path.open("wb") as out:
        batch: list[bytes] = []
        for n in range(count):
            name = b"f%07d" % n
            header = bytearray(template)
            header[0:8] = name
            header[148:156] = b"%06o\0 " % (base + sum(name))
            batch.append(bytes(header))
            if len(batch) == 4096 or n == count - 1:
                out.write(comp.compress(b"".join(batch)))
                batch = []
        out.write(comp.compress(bytes(2 * tarfile.BLOCKSIZE)) + comp.flush())
    return path
