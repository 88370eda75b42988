"""The session's last check: no process started under a test's folder outlives the run.

A leak used to be silent: a whole e2e cluster (registry, agents, nginx, HAProxy, nine apps)
kept running after a green `make test`. Now every folder a test works in is watched (this
session's pytest basetemp and each `short_dir`), and when the session ends, after every
fixture's teardown, any live process whose working folder or an argument lies under one of
them is listed (pid, command line, cwd) and fails the run; then it is killed, so one leak
does not hold ports for the next run.

Registered from tests/conftest.py by importing `pytest_sessionfinish` and the autouse fixture
`_watch_basetemp`; a subprocess can load it alone with `-p tests.support.leaks`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cli.local_procs import Member, processes_under, signal_all, wait_gone

GRACE_S = 10.0  # a process told to stop during teardown may still be on its way out
_FOLDERS: set[str] = set()


def track(folder: Path) -> Path:
    """Watch `folder`: a process left running under it at the end fails the session."""
    _FOLDERS.add(os.path.realpath(folder))
    return folder


def watched() -> list[str]:
    return sorted(_FOLDERS)


@pytest.fixture(autouse=True, scope="session")
def _watch_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every tmp_path of the session lies under its basetemp."""
    track(tmp_path_factory.getbasetemp())


def leftovers(grace: float = GRACE_S) -> list[Member]:
    """Processes still alive under a watched folder once `grace` has passed."""
    if not _FOLDERS:
        return []
    return wait_gone(processes_under(_FOLDERS), grace)


@pytest.hookimpl(trylast=True)  # after the runner's own teardown of session fixtures
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = leftovers()
    if not left:
        return
    lines = [f"{len(left)} process(es) started under a test folder are still running:"]
    lines += [f"  pid {m.pid}: {m.command(400)}  (cwd {m.cwd or '?'})" for m in left]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "processes left running", red=True)
        reporter.write_line("\n".join(lines))
    else:
        print("\n".join(lines))
    signal_all(left, signal.SIGKILL)
    wait_gone(left, 5.0)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
