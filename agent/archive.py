"""Safe unpacking of app artifacts (.tar.gz): nothing may land outside the target folder.

Defence in depth: every member is checked by our own rules first (no absolute paths, no '..',
no links leaving the tree, no devices/FIFOs, bounded count and size), then extracted with
tarfile's "data" filter, which enforces the same again. Extraction goes into a temp folder
beside the target that is renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from agent.errors import UnsafeArchive

MAX_MEMBERS = 20_000
MAX_TOTAL_BYTES = 1 << 30  # 1 GiB unpacked
MAX_MEMBER_BYTES = 512 << 20


def check_members(members: list[tarfile.TarInfo], *, max_total_bytes: int) -> None:
    """Refuse the archive when any member could escape the tree or is not a plain entry."""
    if len(members) > MAX_MEMBERS:
        raise UnsafeArchive(f"archive has {len(members)} entries, more than {MAX_MEMBERS}")
    total = 0
    for member in members:
        name = member.name
        path = PurePosixPath(name)
        if "\x00" in name or path.is_absolute() or name.startswith("/"):
            raise UnsafeArchive(f"archive entry {name!r} has an absolute path")
        if ".." in path.parts:
            raise UnsafeArchive(f"archive entry {name!r} contains '..'")
        if (
            member.isdev()
            or member.isfifo()
            or not (member.isfile() or member.isdir() or member.issym() or member.islnk())
        ):
            raise UnsafeArchive(f"archive entry {name!r} is a device, FIFO or special file")
        if member.issym():
            _check_link_target(name, member.linkname, relative_to=path.parent)
        if member.islnk():
            _check_link_target(name, member.linkname, relative_to=PurePosixPath("."))
        if member.size > MAX_MEMBER_BYTES:
            raise UnsafeArchive(f"archive entry {name!r} is {member.size} bytes, too large")
        total += max(0, member.size)
        if total > max_total_bytes:
            raise UnsafeArchive(f"archive unpacks to more than {max_total_bytes} bytes")


def _check_link_target(name: str, target: str, *, relative_to: PurePosixPath) -> None:
    if not target or target.startswith("/"):
        raise UnsafeArchive(f"archive entry {name!r} links to an absolute path {target!r}")
    depth = 0
    for part in (relative_to / target).parts:
        if part == "..":
            depth -= 1
        elif part not in (".", ""):
            depth += 1
        if depth < 0:
            raise UnsafeArchive(f"archive entry {name!r} links outside the tree ({target!r})")


def _extract(tar: tarfile.TarFile, dest: Path, members: list[tarfile.TarInfo]) -> None:
    """Extract with the "data" filter; Python without it (Debian 12's 3.11.2 predates 3.11.4)
    gets the same effect by hand: no owners from the archive, no set-id bits, no write
    permission for group or others. check_members has already refused the unsafe paths."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=members, filter="data")
        return
    for member in members:
        member.uid, member.gid = os.getuid(), os.getgid()
        member.uname = member.gname = ""
        if member.isdir():
            member.mode = 0o755  # the filter leaves folders at the default mode
        elif member.isfile() or member.islnk():  # a hard link's mode applies to its target
            member.mode = (member.mode | 0o600) & 0o755
    tar.extractall(dest, members=members, numeric_owner=True)


def unpack(archive: Path, dest: Path, *, max_total_bytes: int = MAX_TOTAL_BYTES) -> Path:
    """Unpack `archive` into `dest` (which must not exist yet), atomically.

    Raises UnsafeArchive for a hostile or unreadable archive; `dest` is then not created.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".unpack", dir=dest.parent))
    try:
        try:
            with tarfile.open(archive, mode="r:*") as tar:
                members = tar.getmembers()
                check_members(members, max_total_bytes=max_total_bytes)
                _extract(tar, tmp, members)
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, getattr(tarfile, "FilterError", ())):
                raise UnsafeArchive(f"archive refused: {exc}") from exc
            raise UnsafeArchive(f"archive {archive.name} could not be read: {exc}") from exc
        os.chmod(tmp, 0o755)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
