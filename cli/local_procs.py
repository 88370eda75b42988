"""Which processes belong to a local cluster, found from its state folder rather than pids.

A pid file goes stale: a component killed and restarted, a restarted agent that adopted
nginx and apps it never started, a wall-clock step that moves psutil's start times (they
are boot time + ticks, and boot time is derived from the wall clock). What does not change
is where a process runs and what it reads: the registry and the agents run in the state
folder, nginx and HAProxy take their configs from it, app instances run in their releases
under it. So a cluster's processes are those whose working folder or an argument lies under
its state folder (never this process or its parents, nor a `paas` command a user runs).
Identity is the pid plus its start in clock ticks since boot, which no clock change moves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

REGISTRY_PROGRAM = "paas-registry"
AGENT_PROGRAM = "paas-agent"
CLI_PROGRAM = "paas"


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:
        return int(raw[raw.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def same_process(pid: int, ticks: int | None) -> bool:
    """True if `pid` runs, is not a zombie, and (given `ticks`) is the one that started then."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return ticks is None or start_ticks(pid) == ticks


@dataclass(frozen=True)
class Member:
    """A live process attributed to a state folder."""

    pid: int
    ticks: int | None
    ppid: int
    role: str  # registry, the agent's --name, nginx, haproxy, or app
    cmdline: tuple[str, ...]
    cwd: str

    def alive(self) -> bool:
        return same_process(self.pid, self.ticks)

    def describe(self) -> str:
        return f"{self.role} (pid {self.pid})"

    def command(self, limit: int = 160) -> str:
        text = " ".join(self.cmdline)
        return text if len(text) <= limit else text[: limit - 3] + "..."


def is_under(path: str, folder: str) -> bool:
    path = path.removesuffix(" (deleted)")  # the folder was removed while it ran there
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _program(cmdline: tuple[str, ...]) -> str:
    """The program a command line runs: `python /venv/bin/paas-agent ...` is paas-agent."""
    names = [os.path.basename(arg) for arg in cmdline[:2]]
    for name in names:
        if name in (REGISTRY_PROGRAM, AGENT_PROGRAM, CLI_PROGRAM):
            return name
    return names[0] if names else ""


def _role(name: str, cmdline: tuple[str, ...]) -> str:
    program = _program(cmdline)
    if program == REGISTRY_PROGRAM:
        return "registry"
    if program == AGENT_PROGRAM:
        args = list(cmdline)
        if "--name" in args[:-1]:
            return args[args.index("--name") + 1]
        return "agent"
    if name == "nginx" or (cmdline and cmdline[0].startswith("nginx:")):
        return "nginx"
    if name == "haproxy" or program == "haproxy":
        return "haproxy"
    return "app"


def _ourselves() -> set[int]:
    pids = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        pids.update(p.pid for p in psutil.Process().parents())
    return pids


def processes_under(folders: Iterable[Path | str], *, tools: bool = True) -> list[Member]:
    """Live processes whose cwd or an argument lies under one of `folders`. `tools=False`
    leaves out what a user runs there: `paas` commands and anything with a controlling
    terminal (a shell or `less` in the state folder); the cluster's processes have none,
    as each component starts in a session of its own."""
    marks = sorted({p for f in folders for p in (os.path.abspath(f), os.path.realpath(f))})
    skip = _ourselves()
    found = []
    attrs = ["pid", "ppid", "name", "cmdline", "cwd", "status", "terminal"]
    for proc in psutil.process_iter(attrs):
        info = proc.info
        if info["pid"] in skip or info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        cmdline = tuple(info.get("cmdline") or ())
        cwd = info.get("cwd") or ""
        if not any(
            is_under(cwd, mark) or any(mark.rstrip("/") + "/" in arg for arg in cmdline)
            for mark in marks
        ):
            continue
        if not tools and (info.get("terminal") or _program(cmdline) == CLI_PROGRAM):
            continue
        role = _role(info.get("name") or "", cmdline)
        ppid = info.get("ppid") or 0
        found.append(Member(info["pid"], start_ticks(info["pid"]), ppid, role, cmdline, cwd))
    return found


def signal_all(members: Iterable[Member], sig: int) -> None:
    """Signal each; one that leads its process group (an app instance, nginx, HAProxy: the
    agents start them so) gets it for the whole group, as its agent would send it."""
    for member in members:
        if not member.alive():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(member.pid) == member.pid:
                os.killpg(member.pid, sig)
            else:
                os.kill(member.pid, sig)


def wait_gone(members: Iterable[Member], timeout: float) -> list[Member]:
    """Wait up to `timeout` for all to exit; returns those still alive."""
    left = list(members)
    deadline = time.monotonic() + timeout
    while True:
        left = [m for m in left if m.alive()]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def terminate(members: list[Member], *, timeout: float) -> list[Member]:
    """SIGTERM the topmost ones (an nginx master and its group, not a worker alone, which
    the master would respawn), wait up to `timeout`, then SIGKILL what remains. Returns
    those alive when it began."""
    alive = [m for m in members if m.alive()]
    pids = {m.pid for m in alive}
    signal_all([m for m in alive if m.ppid not in pids], signal.SIGTERM)
    stubborn = wait_gone(alive, timeout)
    if stubborn:
        signal_all(stubborn, signal.SIGKILL)
        wait_gone(stubborn, 5.0)
    return alive


def claimed_ranges() -> list[tuple[int, int]]:
    """Port ranges that running agents and registries on this machine were given (app ports,
    service ports): free now, but theirs to hand out; a new cluster picks apart from them."""
    found = []
    for args in _command_lines():
        program = _program(tuple(args))
        if program == AGENT_PROGRAM:
            found.append(_option(args, "--port-range") or "20000-29999")  # the agent's default
        elif program == REGISTRY_PROGRAM and "serve" in args:
            least, most = _option(args, "--service-port-min"), _option(args, "--service-port-max")
            found.append(f"{least or 20000}-{most or 29999}")
    return _ranges(found)


def claimed_uid_ranges() -> list[tuple[int, int]]:
    """App uid ranges of the machine agents running here. Two agents that hand out the same
    uid would let one's app read the other's files, and the janitor of one kill the other's
    app: a new cluster takes a block apart from all of them."""
    return uid_ranges_of(_command_lines())


def uid_ranges_of(command_lines: Iterable[list[str]]) -> list[tuple[int, int]]:
    found = []
    for args in command_lines:
        role = _option(args, "--role")
        if _program(tuple(args)) == AGENT_PROGRAM and role in (None, "machine"):
            found.append(_option(args, "--app-uids") or "70000-79999")  # the agent's default
    return _ranges(found)


def _command_lines() -> list[list[str]]:
    lines = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            lines.append(list(proc.info.get("cmdline") or ()))
    return lines


def _ranges(found: list[str]) -> list[tuple[int, int]]:
    ranges = []
    for text in found:
        with contextlib.suppress(ValueError):
            low, high = (int(part) for part in text.split("-"))
            ranges.append((low, high))
    return ranges


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None
