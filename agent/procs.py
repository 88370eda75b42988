"""The agents' one OS boundary for child processes: run, spawn, find, signal, wait, reap.

Apps, nginx and HAProxy all go through here. argv lists only, never a shell string built by
formatting; a timeout on every blocking call. Long-running children (app instances, nginx,
HAProxy) start in their own session so a stop reaches the whole process group and a Ctrl-C
at the agent's terminal does not hit them directly. A process an earlier agent run started is
found again by pid (and start time, so a recycled pid is never mistaken for it) and adopted
behind the same interface as a child of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from agent.errors import AgentError

log = logging.getLogger(__name__)


class ProcessError(AgentError):
    """A command could not be started, timed out, or exited non-zero."""

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        self.output = output


PRIVEXEC = Path(__file__).with_name("privexec.py")


@dataclass(frozen=True)
class AppUser:
    """Run a process as an app's own unprivileged uid (gid = uid, no supplementary groups,
    no_new_privs), inside the cgroups whose `cgroup.procs` files are listed."""

    uid: int
    gid: int
    cgroups: tuple[Path, ...] = field(default=())

    def in_cgroups(self, procs_files: Sequence[Path]) -> AppUser:
        return replace(self, cgroups=tuple(procs_files))


@dataclass
class Prepared:
    """An argv and environment ready for Popen; `close()` once the child has started."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()

    def close(self) -> None:
        for fd in self.pass_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pass_fds = ()


def prepare(argv: Sequence[str], env: Mapping[str, str], user: AppUser | None) -> Prepared:
    """`argv` as is, or wrapped in agent/privexec.py to become `user` (see there): the root
    wrapper gets an empty environment, the app's comes as JSON on a memfd."""
    if user is None:
        return Prepared(list(argv), dict(env))
    # Close-on-exec: only this child gets it (pass_fds), never one forked meanwhile.
    fd = os.memfd_create("paas-env", os.MFD_CLOEXEC)
    try:
        data = json.dumps(dict(env)).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    wrapper = [sys.executable, "-I", "-S", str(PRIVEXEC)]
    wrapper += ["--uid", str(user.uid), "--gid", str(user.gid), "--env-fd", str(fd)]
    for procs_file in user.cgroups:
        wrapper += ["--cgroup", str(procs_file)]
    return Prepared([*wrapper, "--", *argv], {}, (fd,))


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
    user: AppUser | None = None,
) -> RunResult:
    """Run a short command to completion; output is captured (stderr merged into stdout).

    With `user`, it runs as that app user (a timeout kills its whole process group)."""
    if user is not None:
        return _run_as(argv, timeout_s=timeout_s, env=env or {}, cwd=cwd, check=check, user=user)
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


def _run_as(
    argv: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str],
    cwd: Path | None,
    check: bool,
    user: AppUser,
) -> RunResult:
    prepared = prepare(argv, env, user)
    try:
        popen = subprocess.Popen(
            prepared.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=prepared.env,
            cwd=cwd,
            pass_fds=prepared.pass_fds,
            start_new_session=True,
        )
    except OSError as exc:
        raise ProcessError(f"could not run {argv[0]}: {exc}") from exc
    finally:
        prepared.close()
    try:
        out, _ = popen.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(OSError):
            os.killpg(popen.pid, signal.SIGKILL)
        out, _ = popen.communicate()
        raise ProcessError(
            f"{argv[0]} did not finish within {timeout_s:g}s", output=_text(out)
        ) from exc
    finally:
        # Whatever the command left behind in its group goes too.
        with contextlib.suppress(OSError):
            os.killpg(popen.pid, signal.SIGKILL)
    result = RunResult(returncode=popen.returncode, output=_text(out))
    if check and popen.returncode != 0:
        raise ProcessError(f"{argv[0]} exited with status {popen.returncode}", output=result.output)
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

    def signal_leader(self, sig: int) -> bool:
        """Send `sig` to the child alone (a proxy master's reload or quit); False when gone."""
        if self.poll() is not None:
            return False
        return signal_pid(self._popen.pid, sig)

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

    def signal_leader(self, sig: int) -> bool:
        """Send `sig` to this process alone; False when it is gone."""
        if self.poll() is not None:
            return False
        return signal_pid(self._proc.pid, sig)

    def cmdline(self) -> list[str]:
        """Its argv ([] once it is gone or unreadable)."""
        try:
            return self._proc.cmdline()
        except psutil.Error:
            return []

    def cwd(self) -> Path | None:
        """Its working folder; None when we may not read it (no CAP_SYS_PTRACE).
        Raises ProcessError when it is gone."""
        try:
            return Path(self._proc.cwd()).resolve()
        except psutil.AccessDenied:
            return None
        except (OSError, psutil.Error) as exc:
            raise ProcessError(f"pid {self._proc.pid} is gone") from exc

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


def find(pid: int, *, created: float | None = None, leader: bool = True) -> Adopted | None:
    """A handle on the running process `pid` an earlier agent run started, or None when it
    is gone, a zombie, not the one that started at `created` (a recycled pid) or, with
    `leader`, not the leader of its own process group (every child we spawn is)."""
    if pid <= 1:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if created is not None and abs(proc.create_time() - created) >= 0.05:
            return None
        if leader and os.getpgid(pid) != pid:
            return None
        return Adopted(proc)
    except (OSError, psutil.Error):
        return None


@dataclass(frozen=True)
class ChildProcess:
    pid: int
    title: str  # its command line as one string (what a proxy master shows as its title)


def children(pid: int, *, recursive: bool = False) -> list[ChildProcess]:
    """The children of `pid` (with `recursive`, theirs too) and their titles ([] when gone)."""
    pids = _descendant_pids(pid, recursive=recursive)
    if pids is None:  # no /proc/<pid>/task/<tid>/children in this kernel
        try:
            pids = [kid.pid for kid in psutil.Process(pid).children(recursive=recursive)]
        except psutil.Error:
            return []
    found = []
    for kid in pids:
        try:
            found.append(ChildProcess(kid, " ".join(psutil.Process(kid).cmdline())))
        except psutil.Error:
            continue
    return found


def _descendant_pids(pid: int, *, recursive: bool) -> list[int] | None:
    """From the kernel's own lists of each thread's children. psutil instead reads the parent
    of every process on the host, and nginx reloads poll this every 10 ms."""
    found: list[int] = []
    waiting = [pid]
    while waiting:
        kids = _child_pids(waiting.pop())
        if kids is None:
            return None
        found += kids
        if recursive:
            waiting += kids
    return found


def _child_pids(pid: int) -> list[int] | None:
    """[] when `pid` is gone; None when the kernel has no `children` files."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    except OSError:
        return None
    kids: list[int] = []
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except FileNotFoundError:
            if Path(f"/proc/{pid}/task/{task}").exists():
                return None  # the thread is there, the file is not: CONFIG_PROC_CHILDREN off
            continue  # the thread ended meanwhile
        except OSError:
            return None
        kids += (int(word) for word in text.split())
    return kids


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
    env: Mapping[str, str] | None,
    cwd: Path | None,
    log_path: Path,
    user: AppUser | None = None,
) -> Child:
    """Start a child in a new session, stdout/stderr appended to `log_path`; `env` and `cwd`
    None: the agent's own.

    With `user` (the agent runs as root), the child runs as that app's uid in its cgroups
    (agent/privexec.py). The agent opens the log (0600, in a folder only it reads) and hands
    the descriptor over: the app can write its log, never reopen, read or remove others'.
    """
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    prepared = prepare(argv, os.environ if env is None else env, user)
    with os.fdopen(fd, "ab") as out:
        try:
            popen = subprocess.Popen(
                prepared.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=prepared.env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                pass_fds=prepared.pass_fds,
            )
        except OSError as exc:
            raise ProcessError(f"could not start {argv[0]}: {exc}") from exc
        finally:
            prepared.close()
    return Child(popen)


async def spawn_piped(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    user: AppUser | None = None,
) -> asyncio.subprocess.Process:
    """Start a child in a new session with stdout and stderr as pipes (a one-off run that
    streams its output); with `user`, as that app user (see `prepare`)."""
    prepared = prepare(argv, env, user)
    try:
        return await asyncio.create_subprocess_exec(
            *prepared.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=prepared.env,
            cwd=cwd,
            start_new_session=True,
            pass_fds=prepared.pass_fds,
        )
    except OSError as exc:
        raise ProcessError(f"could not start {argv[0]}: {exc}") from exc
    finally:
        prepared.close()


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


def kill_group(pgid: int, *, timeout_s: float = 3.0) -> None:
    """SIGKILL every process left in group `pgid` (a dead leader's workers may still hold its
    port) and wait, bounded, until none is left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)


def signal_pid(pid: int, sig: int) -> bool:
    """Send `sig` to one process; False when it is gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    except OSError as exc:
        raise ProcessError(f"could not signal pid {pid}: {exc}") from exc
    return True


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to process group `pgid`; a gone group is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def pids_of_uid(uid: int) -> list[int]:
    """Every process running with `uid` as its real, effective or saved user id."""
    found = []
    for proc in psutil.process_iter():
        try:
            if uid in proc.uids():
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


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
