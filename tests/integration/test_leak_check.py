"""The session finalizer (tests/support/leaks.py) for real: a pytest run whose test leaves a
detached process working in its tmp_path fails, names the process (pid, command line,
cwd) and kills it; the same run without the leak passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]

LEAKY = """
import subprocess

def test_starts_a_server_and_forgets_it(tmp_path):
    proc = subprocess.Popen(
        ["sleep", "3600"], cwd=tmp_path, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    (tmp_path.parent.parent / "leaked.pid").write_text(str(proc.pid))
"""

TIDY = """
import subprocess

def test_starts_a_process_and_ends_it(tmp_path):
    proc = subprocess.Popen(["sleep", "3600"], cwd=tmp_path, start_new_session=True)
    proc.kill()
    proc.wait()
"""


def run_pytest(folder: Path, source: str) -> subprocess.CompletedProcess[str]:
    (folder / "test_inner.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [
        sys.executable, "-m", "pytest", "-q", "-p", "tests.support.leaks",
        "-p", "no:cacheprovider", "--basetemp", str(folder / "bt"),
        "--rootdir", str(folder), str(folder / "test_inner.py"),
    ]  # fmt: skip
    return subprocess.run(
        argv,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_leaked_process_fails_the_session_and_is_listed(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, LEAKY)
    out = done.stdout + done.stderr
    pid = int((tmp_path / "leaked.pid").read_text())
    assert done.returncode == 1, out
    assert "1 passed" in out, out
    assert "processes left running" in out, out
    assert f"pid {pid}: sleep 3600" in out, out
    assert f"(cwd {tmp_path.resolve()}/bt/" in out, out
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_tidy_session_passes(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, TIDY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "processes left running" not in done.stdout
