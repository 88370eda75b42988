"""The session's last check: no process started under a test's folder outlives the run.

A leak used to be silent: a whole e2e cluster (registry, agents, nginx, HAProxy, nine apps)
kept running after a green `make test`. Now every folder a test works in is watched (this
session's pytest basetemp and each `short_dir`), and when the session ends, after every
fixture's teardown, any live process whose working folder or an argument lies under one of
them is listed (pid, command line, cwd) and fails the run; then it is killed, so one leak
does not hold ports for the next run.

Under pytest-xdist each worker checks its own folders after its own teardown and hands the
list to the controller (workeroutput), which reports them all and fails the run.

Registered from tests/conftest.py by importing `pytest_sessionfinish`, `pytest_testnodedown`
and the autouse fixture `_watch_basetemp`; a subprocess can load it alone with
`-p tests.support.leaks`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cli.local_procs import Member, processes_under, signal_all, wait_gone

# A process told to stop during teardown may still be on its way out.
GRACE_S = float(os.environ.get("LEAK_GRACE_S", "10"))
WORKER_KEY = "paas_leaked_processes"
_FOLDERS: set[str] = set()
_FROM_WORKERS: list[str] = []


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


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist controller: collect what a finished worker found left running."""
    _FROM_WORKERS.extend(getattr(node, "workeroutput", {}).get(WORKER_KEY, []))


@pytest.hookimpl(trylast=True)  # after the runner's own teardown of session fixtures
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = leftovers()
    lines = [f"pid {m.pid}: {m.command(400)}  (cwd {m.cwd or '?'})" for m in left]
    if left:
        signal_all(left, signal.SIGKILL)
        wait_gone(left, 5.0)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput[WORKER_KEY] = lines
        return
    lines += _FROM_WORKERS
    if not lines:
        return
    text = "\n".join(
        [f"{len(lines)} process(es) started under a test folder were still running:"]
        + [f"  {line}" for line in lines]
    )
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "processes left running", red=True)
        reporter.write_line(text)
    else:
        print(text)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
