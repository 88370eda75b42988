"""A real full filesystem for disk-full tests: a small tmpfs mounted for the test only.

Needs root (or CAP_SYS_ADMIN); without it the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, *, size: str = "2m") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `path` (created if missing); unmounted in any case."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = _run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)])
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs (needs root and the mount program): {exc}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if _run(["umount", str(path)]).returncode != 0:
            _run(["umount", "-l", str(path)])  # still busy (a process cwd): detach it


def resize(path: Path, size: str) -> None:
    done = _run(["mount", "-o", f"remount,size={size}", str(path)])
    assert done.returncode == 0, done.stderr
