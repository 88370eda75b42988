"""The session finalizer (tests/support/leaks.py) for real: a pytest run (serial or with
xdist workers) whose test leaves a detached process working in its tmp_path fails, names
the process (pid, command line, cwd) and kills it; the same run without the leak passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]

LEAKY = """
import os
import subprocess

def test_starts_a_server_and_forgets_it(tmp_path):
    proc = subprocess.Popen(
        ["sleep", "3600"], cwd=tmp_path, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    with open(os.environ["LEAKED_PID_FILE"], "w") as fh:
        fh.write(str(proc.pid))
"""

TIDY = """
import subprocess

def test_starts_a_process_and_ends_it(tmp_path):
    proc = subprocess.Popen(["sleep", "3600"], cwd=tmp_path, start_new_session=True)
    proc.kill()
    proc.wait()
"""


def run_pytest(folder: Path, source: str, *extra: str) -> subprocess.CompletedProcess[str]:
    (folder / "test_inner.py").write_text(source)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LEAKED_PID_FILE": str(folder / "leaked.pid"),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # a faster start; xdist is named when used
        "LEAK_GRACE_S": "0.5",
    }
    argv = [
        sys.executable, "-m", "pytest", "-q", "-p", "tests.support.leaks",
        "-p", "no:cacheprovider", "--basetemp", str(folder / "bt"),
        "--rootdir", str(folder), *extra, str(folder / "test_inner.py"),
    ]  # fmt: skip
    return subprocess.run(
        argv,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("workers", [[], ["-p", "xdist", "-n", "2"]], ids=["serial", "xdist"])
def test_a_leaked_process_fails_the_session_and_is_listed(
    tmp_path: Path, workers: list[str]
) -> None:
    """Serial, and under pytest-xdist (a worker finds it, the controller fails the run)."""
    done = run_pytest(tmp_path, LEAKY, *workers)
    out = done.stdout + done.stderr
    pid = int((tmp_path / "leaked.pid").read_text())
    assert done.returncode == 1, out
    assert "1 passed" in out, out
    assert "processes left running" in out, out
    assert f"pid {pid}: sleep 3600" in out, out
    assert f"(cwd {tmp_path.resolve()}/bt/" in out, out  # under a worker's basetemp with -n
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_tidy_session_passes(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, TIDY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "processes left running" not in done.stdout
