"""Safe unpacking of app artifacts (.tar.gz): nothing may land or point outside the target.

The agent is root and the archive is the user's, so extraction is done here, entry by entry,
and never by tarfile (whose "data" filter Debian 12's Python 3.11.2 does not have, and whose
fallback followed symlinks made earlier in the same archive):

- members are streamed (common/tarstream.py): count, size of each and total bytes are
  refused from the header, before data is read; the decompressed stream is bounded too;
- a member's path is checked lexically (relative, no '..', no NUL) and then every folder on
  it is opened with O_NOFOLLOW|O_DIRECTORY relative to the one before (`dir_fd`), starting at
  the root: the walk never traverses a symlink, whatever the archive made earlier;
- regular files are created with O_CREAT|O_EXCL|O_NOFOLLOW (no entry replaces another);
- a symlink is kept only when its target is relative, its '..' parts all come first (so they
  climb real folders: the link's own folder and its parents) and they do not climb above the
  root; the rest of the target only descends, so by induction every link resolves inside the
  tree, even through other links (the agent later reads requirements.txt and friends as root);
- a hard link becomes a copy of an earlier regular member (bytes counted again), never a link;
- devices, FIFOs, sparse and unknown entry types are refused; modes lose set-id bits and
  group/other write, the owner can always read and write; owners come from the agent, never
  from the archive.

A refused archive leaves nothing: everything goes into a temp folder beside the target,
renamed into place only when complete, removed otherwise.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Literal

from agent.errors import UnsafeArchive
from common.tarstream import ArchiveLimit, ArchiveUnreadable, Limits, members, open_stream

MAX_MEMBERS = 20_000
MAX_TOTAL_BYTES = 512 << 20  # unpacked, per release
COPY_CHUNK = 1 << 20

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

# What a name or type from the archive can make the OS refuse (vs. the disk's own troubles).
ENTRY_ERRNOS = (
    errno.ENAMETOOLONG,
    errno.EEXIST,
    errno.ELOOP,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EINVAL,
    errno.EILSEQ,
    errno.EMLINK,
)

Kind = Literal["dir", "file", "symlink"]
Parts = tuple[str, ...]


def entry_parts(name: str, *, what: str = "archive entry") -> Parts:
    """The path of an entry as folder names under the root; refuses absolute paths, '..'
    and NUL. '.' and empty parts ('a//b', './a', 'dir/') are dropped."""
    if "\x00" in name:
        raise UnsafeArchive(f"{what} {name!r} has a NUL byte in its path")
    if name.startswith("/"):
        raise UnsafeArchive(f"{what} {name!r} has an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"{what} {name!r} contains '..'")
    return parts


def check_link_target(name: str, link_folder: Parts, target: str) -> None:
    """A symlink stays inside the tree when its target is relative, every '..' comes before
    the first name, and there are no more '..' than folders above the link (see the module
    docstring for why a '..' after a name is refused even when it looks harmless: `up/..`
    climbs from wherever `up` points, not from the folder that holds it)."""
    if not target or "\x00" in target:
        raise UnsafeArchive(f"archive entry {name!r} is a symlink with an empty or NUL target")
    if target.startswith("/"):
        raise UnsafeArchive(f"archive entry {name!r} links to an absolute path {target!r}")
    parts = [part for part in target.split("/") if part not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ups > len(link_folder):
        raise UnsafeArchive(f"archive entry {name!r} links outside the tree ({target!r})")
    if ".." in parts[ups:]:
        raise UnsafeArchive(
            f"archive entry {name!r} links to {target!r}: '..' after a name in a link target"
            " is refused (it may climb out through another link)"
        )


class _Tree:
    """The folder being filled, reached only through directory fds opened without following
    symlinks, plus what each path already is (so an entry never replaces another)."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, DIR_FLAGS)
        self.kinds: dict[Parts, Kind] = {(): "dir"}
        self.written = 0  # bytes of files, copies of hard links included

    def close(self) -> None:
        os.close(self.root_fd)

    def open_folder(self, name: str, folder: Parts) -> int:
        """An fd of `folder`, made as needed; refuses a path that passes through anything but a
        folder this archive made (a symlink, a file)."""
        fd = os.dup(self.root_fd)
        try:
            for depth in range(1, len(folder) + 1):
                prefix = folder[:depth]
                kind = self.kinds.get(prefix)
                if kind is None:
                    os.mkdir(prefix[-1], 0o755, dir_fd=fd)
                    self.kinds[prefix] = "dir"
                elif kind != "dir":
                    raise UnsafeArchive(
                        f"archive entry {name!r} is under {'/'.join(prefix)!r}, which is a"
                        f" {kind} in this archive: entries may only be written under folders"
                    )
                try:
                    child = os.open(prefix[-1], DIR_FLAGS, dir_fd=fd)
                except OSError as exc:  # ELOOP/ENOTDIR: not a real folder after all
                    raise UnsafeArchive(
                        f"archive entry {name!r}: {'/'.join(prefix)!r} is not a folder ({exc})"
                    ) from exc
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def claim(self, name: str, parts: Parts, kind: Kind) -> None:
        existing = self.kinds.get(parts)
        if existing is not None:
            raise UnsafeArchive(
                f"archive entry {name!r} would replace the {existing} of the same name:"
                " an entry may appear only once"
            )
        self.kinds[parts] = kind


def _file_mode(mode: int) -> int:
    """tarfile's "data" filter rule: no set-id, no group/other write, executable only if the
    owner may execute, owner read/write always."""
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def _write_stream(fd: int, source: IO[bytes], size: int, name: str) -> None:
    remaining = size
    while remaining > 0:
        chunk = source.read(min(COPY_CHUNK, remaining))
        if not chunk:
            raise ArchiveUnreadable(f"archive entry {name!r} ends early")
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        remaining -= len(chunk)


def _extract(tar: tarfile.TarFile, tree: _Tree, limits: Limits) -> None:
    for member in members(tar, limits):
        name = member.name
        parts = entry_parts(name)
        if member.isdir():
            if not parts:
                continue  # "./": the root itself
            if tree.kinds.get(parts) == "dir":
                continue  # an explicit entry for a folder a file already made
            fd = tree.open_folder(name, parts[:-1])
            try:
                tree.claim(name, parts, "dir")
                os.mkdir(parts[-1], 0o755, dir_fd=fd)
            finally:
                os.close(fd)
            continue
        if not parts:
            raise UnsafeArchive(f"archive entry {name!r} has no name")
        if member.issym():
            check_link_target(name, parts[:-1], member.linkname)
            fd = tree.open_folder(name, parts[:-1])
            try:
                tree.claim(name, parts, "symlink")
                os.symlink(member.linkname, parts[-1], dir_fd=fd)
            finally:
                os.close(fd)
        elif member.islnk():
            _copy_hard_link(tree, member, parts, limits)
        elif member.isreg() and not member.issparse():
            _write_member(tar, tree, member, parts, limits)
        else:
            raise UnsafeArchive(
                f"archive entry {name!r} is a device, FIFO or special file (type"
                f" {member.type!r}); only files, folders and symlinks are unpacked"
            )


def _write_member(
    tar: tarfile.TarFile, tree: _Tree, member: tarfile.TarInfo, parts: Parts, limits: Limits
) -> None:
    name = member.name
    tree.written += member.size
    if tree.written > limits.max_total_bytes:  # members() counted files, this adds copies
        raise ArchiveLimit(
            f"archive unpacks to more than {limits.max_total_bytes} bytes at {name!r}"
        )
    source = tar.extractfile(member)
    if source is None:
        raise UnsafeArchive(f"archive entry {name!r} cannot be read")
    folder = tree.open_folder(name, parts[:-1])
    try:
        tree.claim(name, parts, "file")
        fd = os.open(parts[-1], NEW_FILE_FLAGS, 0o600, dir_fd=folder)
    finally:
        os.close(folder)
    try:
        _write_stream(fd, source, member.size, name)
        os.fchmod(fd, _file_mode(member.mode))
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)


def _copy_hard_link(tree: _Tree, member: tarfile.TarInfo, parts: Parts, limits: Limits) -> None:
    name = member.name
    target = entry_parts(member.linkname, what=f"hard link {name!r} to")
    if tree.kinds.get(target) != "file":
        raise UnsafeArchive(
            f"archive entry {name!r} is a hard link to {member.linkname!r}, which is not an"
            " earlier regular file of this archive"
        )
    src_folder = tree.open_folder(name, target[:-1])
    try:
        src = os.open(target[-1], READ_FLAGS, dir_fd=src_folder)
    finally:
        os.close(src_folder)
    try:
        info = os.fstat(src)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeArchive(f"archive entry {name!r}: {member.linkname!r} is not a file")
        tree.written += info.st_size
        if tree.written > limits.max_total_bytes:
            raise ArchiveLimit(
                f"archive unpacks to more than {limits.max_total_bytes} bytes at entry"
                f" {name!r} (a hard link, unpacked as a copy of {member.linkname!r})"
            )
        folder = tree.open_folder(name, parts[:-1])
        try:
            tree.claim(name, parts, "file")
            fd = os.open(parts[-1], NEW_FILE_FLAGS, 0o600, dir_fd=folder)
        finally:
            os.close(folder)
        try:
            with os.fdopen(os.dup(src), "rb") as reader:
                _write_stream(fd, reader, info.st_size, name)
            os.fchmod(fd, stat.S_IMODE(info.st_mode))
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
    finally:
        os.close(src)


def unpack(
    archive: Path,
    dest: Path,
    *,
    max_members: int = MAX_MEMBERS,
    max_member_bytes: int | None = None,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> Path:
    """Unpack `archive` into `dest` (which must not exist yet), atomically. One member may be
    as large as the whole release unless `max_member_bytes` says less.

    Raises UnsafeArchive for a hostile, oversized or unreadable archive; `dest` is then not
    created and nothing is left beside it.
    """
    limits = Limits(
        max_members=max_members,
        max_member_bytes=min(max_member_bytes or max_total_bytes, max_total_bytes),
        max_total_bytes=max_total_bytes,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".unpack", dir=dest.parent))
    try:
        tree = _Tree(tmp)
        try:
            with archive.open("rb") as raw, open_stream(raw, limits) as tar:
                _extract(tar, tree, limits)
        except ArchiveLimit as exc:
            raise UnsafeArchive(f"archive refused: {exc}") from exc
        except ArchiveUnreadable as exc:
            raise UnsafeArchive(f"archive {archive.name} could not be read: {exc}") from exc
        except OSError as exc:
            if exc.errno not in ENTRY_ERRNOS:
                raise  # the agent's disk (full, read-only): the installer reports that
            raise UnsafeArchive(f"archive {archive.name} could not be unpacked: {exc}") from exc
        finally:
            tree.close()
        os.chmod(tmp, 0o755)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
