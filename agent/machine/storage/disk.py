"""Disk hygiene on a machine host: what the state folder uses, when the disk is too full for
a new release, and which releases, venvs and cached artifacts may go.

Deciding is pure (`releases_to_keep`, `low_disk`); removing goes through `remove_tree`,
which first renames the folder into the app's staging folder (the agent's, 0700: the app
can neither reach nor swap what is being removed) and never follows a link the app put in
its own folders.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import InstallError

log = logging.getLogger(__name__)

MIB = 2**20


class LowDisk(InstallError):
    """The host has too little free space for another release: refused before it fills."""


@dataclass(frozen=True)
class DiskUsage:
    state_mb: int  # what the agent's state folder (apps, venvs, artifacts, logs) holds
    free_mb: int  # free on the filesystem of the state folder
    total_mb: int


def state_size(root: Path) -> int:
    """Bytes under `root` (allocated blocks, links not followed, each inode once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += info.st_blocks * 512
    return total


def free_space(path: Path) -> tuple[int, int]:
    """(free bytes for unprivileged users, total bytes) of the filesystem holding `path`."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize


def measure(state_dir: Path) -> DiskUsage:
    free, total = free_space(state_dir)
    return DiskUsage(
        state_mb=state_size(state_dir) // MIB, free_mb=free // MIB, total_mb=total // MIB
    )


def low_disk(
    free_bytes: int, total_bytes: int, *, min_free_mb: int, min_free_percent: float
) -> str | None:
    """Why the disk is too full for a new release, or None when there is room."""
    free_mb = free_bytes // MIB
    percent = 100.0 * free_bytes / total_bytes if total_bytes else 0.0
    if free_mb < min_free_mb:
        return f"{free_mb} MiB free, below min_free_mb = {min_free_mb}"
    if percent < min_free_percent:
        return f"{percent:.1f} % free, below min_free_percent = {min_free_percent:g}"
    return None


def releases_to_keep(versions: Iterable[int], *, in_use: Iterable[int], keep: int) -> set[int]:
    """The `keep` newest versions, plus every version an instance here uses (the active one,
    one being deployed, and a rollback target that still runs)."""
    newest = sorted(set(versions), reverse=True)[: max(keep, 1)]
    return set(newest) | set(in_use)


def release_versions(releases: Path) -> list[int]:
    """The version folders under an app's releases/ (names that are plain numbers)."""
    try:
        names = os.listdir(releases)
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def remove_tree(path: Path, *, staging: Path) -> bool:
    """Remove an app-owned folder: rename it into the agent's staging folder (same
    filesystem), then delete it there without following links. A link in its place is
    unlinked, never followed. True when something was removed."""
    if not (path.exists() or path.is_symlink()):
        return False
    staging.mkdir(mode=0o700, exist_ok=True)
    doomed = staging / f".gc.{path.name}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        os.rename(path, doomed)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
        return False
    if doomed.is_symlink() or not doomed.is_dir():
        doomed.unlink(missing_ok=True)
        return True

    def _report(_func: object, failed: str, info: object) -> None:
        log.warning("could not remove %s: %s", failed, info)

    shutil.rmtree(doomed, onerror=_report)  # fd-based on Linux: links are never followed
    return True


def older_than(path: Path, age_s: float, *, now: float) -> bool:
    try:
        return now - os.lstat(path).st_mtime >= age_s
    except OSError:
        return False
