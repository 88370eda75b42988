"""The machine agent's one OS boundary for child processes: run, spawn, signal, reap.

argv lists only, never a shell string built by formatting; a timeout on every blocking call.
Long-running children (app instances, nginx) start in their own session so a stop reaches the
whole process group and a Ctrl-C at the agent's terminal does not hit them directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.errors import AgentError

log = logging.getLogger(__name__)


class ProcessError(AgentError):
    """A command could not be started, timed out, or exited non-zero."""

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class RunResult:
    returncode: int
    output: str  # stdout and stderr interleaved


def run(
    argv: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> RunResult:
    """Run a short command to completion; output is captured (stderr merged into stdout)."""
    try:
        done = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.output)
        raise ProcessError(
            f"{argv[0]} did not finish within {timeout_s:g}s", output=output
        ) from exc
    except OSError as exc:
        raise ProcessError(f"could not run {argv[0]}: {exc}") from exc
    result = RunResult(returncode=done.returncode, output=_text(done.stdout))
    if check and done.returncode != 0:
        raise ProcessError(f"{argv[0]} exited with status {done.returncode}", output=result.output)
    return result


class Child:
    """A long-running child in its own process group (pid == pgid)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int:
        return self._popen.pid

    def poll(self) -> int | None:
        """The exit status once the child has exited (and is reaped), else None."""
        return self._popen.poll()

    def signal(self, sig: int) -> None:
        """Send `sig` to the child's whole process group; a gone group is not an error."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, *, grace_s: float) -> int | None:
        """SIGTERM the group, wait `grace_s`, then SIGKILL and reap (bounded). Blocking."""
        if self.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(grace_s) is None:
                log.info("pid %d did not stop within %.1fs, sending SIGKILL", self.pid, grace_s)
                self.signal(signal.SIGKILL)
                self.wait(5.0)
        # Whatever else is left in the group (grandchildren) goes too.
        self.signal(signal.SIGKILL)
        return self.poll()


class Adopted:
    """A process group leader an earlier agent run started (not our child): the same
    interface as Child, through psutil. Its exit status is unknown once it is gone."""

    UNKNOWN_STATUS = -1

    def __init__(self, proc: psutil.Process) -> None:
        self._proc = proc
        self._create_time = proc.create_time()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        return None if same_process(self._proc.pid, self._create_time) else self.UNKNOWN_STATUS

    def signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    def wait(self, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
        return self.UNKNOWN_STATUS

    def stop(self, *, grace_s: float) -> int | None:
        """SIGTERM the group, wait `grace_s`, then SIGKILL the group (bounded). Blocking."""
        if self.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(grace_s) is None:
                log.info("pid %d did not stop within %.1fs, sending SIGKILL", self.pid, grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        return self.poll()


def create_time(pid: int) -> float | None:
    """The process's start time as psutil reports it (None when there is no such process)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def same_process(pid: int, created: float) -> bool:
    """`pid` runs (not a zombie) and is the process that started at `created`, not a
    recycled pid."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - created) < 0.05
    except psutil.Error:
        return False


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    user: str | None = None,
) -> Child:
    """Start a child in a new session, stdout/stderr appended to `log_path`.

    With `user` (the agent runs as root), the child runs as that user and its primary group,
    with no supplementary groups: it gets none of root's privileges.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                user=user,
                group=_primary_group(user) if user is not None else None,
                extra_groups=[] if user is not None else None,
            )
        except OSError as exc:
            raise ProcessError(f"could not start {argv[0]}: {exc}") from exc
    return Child(popen)


def _primary_group(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError as exc:
        raise ProcessError(f"user {user!r} does not exist") from exc


def tail(path: Path, *, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return "\n".join(_text(data).splitlines()[-lines:])


def stop_group(pgid: int, *, grace_s: float) -> None:
    """SIGTERM a process group that is not our child, SIGKILL after `grace_s` (bounded)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode(errors="replace")
