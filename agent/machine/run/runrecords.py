"""What a restarted machine agent needs to take over the instances an earlier run left running.

One JSON file per instance, state_dir/run/<id>.json (0600: the desired instance carries the
config vars), written when its process is spawned and removed once it is stopped. A record
is adopted only when its process still runs, is the same process (psutil create time, not a
recycled pid), still leads its own process group and runs from the release folder it was
started in. Any other process group running from under apps/ is a stray and is stopped, so
no instance ever runs twice or holds a port unsupervised.

A sandboxed agent (no CAP_SYS_PTRACE; every app runs as its own uid, agent/machine/run/uids.py)
cannot
read the working folder of its apps' processes: the pid, its start time and its process
group then identify an instance, and every process of an app uid this agent handed out that
no instance owns is a stray (those uids are the apps' alone).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

import psutil
from pydantic import BaseModel, ConfigDict, ValidationError

from agent import procs
from agent.machine.build.installer import InstalledRelease
from common.fsutil import atomic_write
from common.wire import DesiredInstance

log = logging.getLogger(__name__)


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance: DesiredInstance
    pid: int
    create_time: float
    port: int | None  # None: a worker (no port)
    release_dir: str
    venv: str


def record_path(run_dir: Path, iid: int) -> Path:
    return run_dir / f"{int(iid)}.json"


def write_record(run_dir: Path, record: RunRecord) -> None:
    """Atomically and 0600, never readable by others even for an instant."""
    atomic_write(record_path(run_dir, record.instance.id), record.model_dump_json(), mode=0o600)


def recorder(
    run_dir: Path, d: DesiredInstance, release: InstalledRelease, port: int | None
) -> Callable[[procs.Child], None]:
    """The AppLauncher `on_spawn` hook that records each new process of instance `d`."""

    def record(child: procs.Child) -> None:
        created = procs.create_time(child.pid)
        if created is None:
            return  # gone already; its supervisor sees the exit
        write_record(
            run_dir,
            RunRecord(
                instance=d,
                pid=child.pid,
                create_time=created,
                port=port,
                release_dir=str(release.path),
                venv=str(release.venv),
            ),
        )

    return record


def remove_record(run_dir: Path, iid: int) -> None:
    record_path(run_dir, iid).unlink(missing_ok=True)


def read_records(run_dir: Path) -> list[RunRecord]:
    """Every readable record; unreadable ones (and files of older formats) are removed."""
    records: list[RunRecord] = []
    for path in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            records.append(RunRecord.model_validate_json(path.read_bytes()))
        except (OSError, ValidationError, ValueError):
            log.warning("ignoring unreadable run record %s", path)
            path.unlink(missing_ok=True)
    return records


def adoptable(record: RunRecord) -> procs.Adopted | None:
    """A handle on the record's process when it is still the instance we started."""
    handle = procs.find(record.pid, created=record.create_time)
    if handle is None:
        return None
    try:
        cwd = handle.cwd()
    except procs.ProcessError:
        return None
    if cwd is not None and cwd != Path(record.release_dir).resolve():
        return None
    return handle


def _cwd(proc: psutil.Process) -> Path | None:
    """The process's working folder; None when we may not read it (no CAP_SYS_PTRACE)."""
    try:
        return Path(proc.cwd()).resolve()
    except psutil.AccessDenied:
        return None


def stray_groups(
    apps_dir: Path, *, keep: set[int], app_uids: Collection[int] | None = None
) -> set[int]:
    """Process groups not in `keep` with a member running from under `apps_dir` or, when its
    folder cannot be read, running as one of `app_uids` (the apps' own uids)."""
    root = apps_dir.resolve()
    ours = {os.getpid(), os.getpgid(0)}
    groups: set[int] = set()
    for proc in psutil.process_iter():
        try:
            if proc.pid in ours:
                continue
            cwd = _cwd(proc)
            if cwd is None:
                if not app_uids or proc.uids().real not in app_uids:
                    continue
            elif not cwd.is_relative_to(root):
                continue
            pgid = os.getpgid(proc.pid)
        except (OSError, psutil.Error, ValueError):
            continue
        if pgid not in keep and pgid not in ours and pgid > 1:
            groups.add(pgid)
    return groups


def stop_strays(
    apps_dir: Path,
    *,
    keep: set[int],
    app_uids: Collection[int] | None = None,
    grace_s: float = 5.0,
) -> int:
    """Stop every stray process group (SIGTERM, grace, SIGKILL); returns how many. Blocking."""
    groups = stray_groups(apps_dir, keep=keep, app_uids=app_uids)
    for pgid in sorted(groups):
        log.warning(
            "stopping process group %d: it runs from %s but no instance owns it", pgid, apps_dir
        )
        with contextlib.suppress(OSError):
            procs.stop_group(pgid, grace_s=grace_s)
    return len(groups)
