"""Atomic file writes: the one way this project replaces a file on disk.

A reader (or a restart after a crash) sees the old file or the new one, never half of
either: the data goes to a uniquely named temp file in the same folder (created with its
final mode, so a secret is never readable by others even for an instant), is fsynced, then
renamed over the target, and the folder is fsynced so the rename itself survives a crash.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir"]


def atomic_write(
    path: Path,
    data: bytes | str,
    *,
    mode: int = 0o644,
    fsync: bool = True,
    replace: bool = True,
) -> None:
    """Write `data` (str is UTF-8) to `path` atomically with permission bits exactly `mode`.

    `fsync=False` skips both fsyncs, for small files rewritten often whose loss costs
    nothing but a redo. `replace=False` never overwrites: when `path` already exists (another
    process made it first) FileExistsError is raised and the existing file is kept.
    The parent folder is created when missing.
    """
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL on a fresh random name: never follows a planted link, never meets another writer.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exact, whatever the umask
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # FileExistsError when it exists: theirs is kept
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or creation in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
