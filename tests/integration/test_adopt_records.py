"""Run records and adoption checks against real processes: only the very process an earlier
agent run started is adopted; any other process group running from under apps/ is a stray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import procs
from agent.machine.run.runrecords import (
    RunRecord,
    adoptable,
    read_records,
    remove_record,
    stop_strays,
    write_record,
)
from common.wire import DesiredInstance

SHA = "a" * 64


def _desired(iid: int) -> DesiredInstance:
    return DesiredInstance(
        id=iid,
        app="hello",
        release=1,
        process="web",
        command="sleep 60",
        artifact_sha256=SHA,
        env={"SECRET": "s3cret"},
        health_path="/",
        domains=["hello.paas.test"],
        serve=True,
    )


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)


def _sleep(cwd: Path, started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "60"], cwd=cwd, start_new_session=True)
    started.append(proc)
    return proc


def _record(iid: int, proc: subprocess.Popen[bytes], release: Path) -> RunRecord:
    created = procs.create_time(proc.pid)
    assert created is not None
    return RunRecord(
        instance=_desired(iid),
        pid=proc.pid,
        create_time=created,
        port=20000 + iid,
        release_dir=str(release),
        venv=str(release.parent / "venv"),
    )


def test_records_round_trip_private_and_bad_files_are_dropped(tmp_path: Path) -> None:
    run = tmp_path / "run"
    release = tmp_path / "apps" / "hello" / "releases" / "1"
    record = RunRecord(
        instance=_desired(7),
        pid=123,
        create_time=1.5,
        port=20007,
        release_dir=str(release),
        venv="/v",
    )
    write_record(run, record)
    assert (run / "7.json").stat().st_mode & 0o777 == 0o600  # config vars are secrets
    (run / "8.json").write_text("{not json")
    (run / "9.pid").write_text("4242\n")  # the format of older agents
    assert read_records(run) == [record]
    assert sorted(p.name for p in run.iterdir()) == ["7.json"]
    remove_record(run, 7)
    assert read_records(run) == []


def test_only_the_recorded_process_is_adoptable(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    release = tmp_path / "apps" / "hello" / "releases" / "1"
    release.mkdir(parents=True)
    proc = _sleep(release, spawned)
    good = _record(1, proc, release)
    handle = adoptable(good)
    assert handle is not None and handle.pid == proc.pid and handle.poll() is None
    # A recycled pid: same number, another start time.
    assert adoptable(good.model_copy(update={"create_time": good.create_time - 100})) is None
    # Started from another folder than the release it claims.
    other = tmp_path / "apps" / "hello" / "releases" / "2"
    other.mkdir()
    assert adoptable(good.model_copy(update={"release_dir": str(other)})) is None
    # Gone.
    proc.kill()
    proc.wait(timeout=5)
    assert handle.poll() is not None
    assert adoptable(good) is None


def test_adopted_handle_stops_the_whole_group(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    release = tmp_path / "apps" / "hello" / "releases" / "1"
    release.mkdir(parents=True)
    # A shell with a child, like `/bin/sh -c "gunicorn ..."`: both must go.
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 60 & wait"], cwd=release, start_new_session=True
    )
    spawned.append(proc)
    handle = adoptable(_record(1, proc, release))
    assert handle is not None
    assert handle.stop(grace_s=2.0) is not None
    proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # the orphaned `sleep` is reaped by init
    assert not _group_alive(proc.pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_strays_under_apps_are_stopped_kept_and_foreign_ones_are_not(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    apps = tmp_path / "apps"
    release = apps / "hello" / "releases" / "1"
    release.mkdir(parents=True)
    kept = _sleep(release, spawned)
    stray = _sleep(release, spawned)
    foreign = _sleep(tmp_path, spawned)
    assert stop_strays(apps, keep={kept.pid}, grace_s=2.0) == 1
    assert stray.wait(timeout=5) is not None
    assert kept.poll() is None and foreign.poll() is None


SANDBOXED = """
import json, sys
from pathlib import Path
from agent.machine.run.runrecords import adoptable, read_records, stray_groups

record = read_records(Path(sys.argv[1]))[0]
handle = adoptable(record)
strays = stray_groups(Path(sys.argv[2]), keep={record.pid}, app_uids={int(sys.argv[3])})
print(json.dumps({"adopted": handle.pid if handle else None, "strays": sorted(strays)}))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_agent_without_ptrace_adopts_by_start_time_and_finds_strays_by_user(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    """Like the host image's sandboxed unit: root without CAP_SYS_PTRACE cannot read the
    working folder of apps running as their own user; adoption and strays still work."""
    app_uid = 54321  # no such user: nothing else on this machine runs as it
    release = tmp_path / "apps" / "hello" / "releases" / "1"
    release.mkdir(parents=True)
    started = []
    for _ in range(2):
        proc = subprocess.Popen(
            ["sleep", "60"], cwd=release, start_new_session=True, user=app_uid, group=app_uid
        )
        spawned.append(proc)
        started.append(proc)
    kept, stray = started
    write_record(tmp_path / "run", _record(1, kept, release))
    args = [str(tmp_path / "run"), str(tmp_path / "apps"), str(app_uid)]
    done = subprocess.run(
        ["setpriv", "--bounding-set", "-sys_ptrace", sys.executable, "-c", SANDBOXED, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"adopted": kept.pid, "strays": [stray.pid]}
