"""agent/procs.find: a process of an earlier agent run is found again only when it is the
same process (start time) and, by default, the leader of its own group; the handle signals
the leader alone or the whole group, and reports the exit."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import psutil

from agent import procs

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_find_checks_start_time_and_group_leadership(tmp_path: Path) -> None:
    child = procs.spawn(SLEEPER, env={}, cwd=tmp_path, log_path=tmp_path / "out.log")
    try:
        created = procs.create_time(child.pid)
        assert created is not None
        found = procs.find(child.pid, created=created)
        assert found is not None and found.pid == child.pid
        deadline = time.monotonic() + 10  # right after the fork the child has not exec'd yet
        while found.cmdline() != SLEEPER and time.monotonic() < deadline:
            time.sleep(0.01)
        assert found.cmdline() == SLEEPER and found.cwd() == tmp_path.resolve()
        assert procs.find(child.pid, created=created - 10) is None  # a recycled pid
        assert procs.find(1) is None
        assert found.signal_leader(signal.SIGTERM)
        assert child.wait(10.0) is not None
        assert found.wait(5.0) == procs.Adopted.UNKNOWN_STATUS
        assert procs.find(child.pid, created=created) is None
        assert not found.signal_leader(signal.SIGTERM)  # gone: not an error
    finally:
        child.stop(grace_s=1.0)


def test_kill_group_ends_every_member(tmp_path: Path) -> None:
    # A group leader with a child of its own (as an nginx master has its workers).
    script = (
        "import subprocess, sys, time;"
        " subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        " time.sleep(60)"
    )
    child = procs.spawn(
        [sys.executable, "-c", script], env={}, cwd=tmp_path, log_path=tmp_path / "out.log"
    )
    try:
        kids = _children_once(child, 1)
        assert kids
        procs.kill_group(child.pid)
        assert child.wait(5.0) is not None
        assert procs.find(kids[0].pid, leader=False) is None
    finally:
        child.stop(grace_s=1.0)


def test_children_from_every_thread_and_generation(tmp_path: Path) -> None:
    """Read from the kernel's per-thread lists: a child forked by another thread than the main
    one counts, and `recursive` reaches the grandchildren; the same set psutil finds by
    scanning every process."""
    script = (
        "import subprocess, sys, threading, time;"
        " nap = [sys.executable, '-c', 'import time; time.sleep(60)'];"
        " nest = [sys.executable, '-c', 'import subprocess, sys, time; subprocess.Popen('"
        " + repr(nap) + '); time.sleep(60)'];"
        " threading.Thread(target=lambda: subprocess.Popen(nap)).start();"
        " subprocess.Popen(nest); time.sleep(60)"
    )
    parent = procs.spawn(
        [sys.executable, "-c", script], env={}, cwd=tmp_path, log_path=tmp_path / "out.log"
    )
    try:  # two children and a grandchild, once all have started
        found = {kid.pid for kid in _children_once(parent, 3, recursive=True)}
        direct = {kid.pid for kid in procs.children(parent.pid)}
        assert len(found) == 3 and len(direct) == 2 and direct < found
        by_scan = {p.pid for p in psutil.Process(parent.pid).children(recursive=True)}
        assert found == by_scan
        assert procs.children(999_999_999) == []  # no such process
    finally:
        procs.kill_group(parent.pid)
        parent.stop(grace_s=1.0)


def _children_once(
    parent: procs.Child, count: int, *, recursive: bool = False
) -> list[procs.ChildProcess]:
    """`procs.children` once `count` of them have started (5 s at most)."""
    kids: list[procs.ChildProcess] = []
    for _ in range(500):
        kids = procs.children(parent.pid, recursive=recursive)
        if len(kids) >= count:
            break
        parent.wait(0.01)
    return kids
