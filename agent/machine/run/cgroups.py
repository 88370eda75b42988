"""Per-app cgroups: a hard memory limit per instance, a pids limit and a CPU weight per app.

Layout, under the cgroup the agent itself runs in (read from /proc/self/cgroup):

    <agent's cgroup>/paas-<id>/<app>/            pids.max, cpu weight (the whole app)
    <agent's cgroup>/paas-<id>/<app>/<leaf>/     memory limit (one instance, a build, runs)

(<id> names the agent's state folder, so agents side by side on one machine never share.)

- cgroup v2 (Debian 12 under systemd): one hierarchy. The apps' folder is made at the top
  of the hierarchy, `/sys/fs/cgroup/paas-<id>/` (as Nomad makes `nomad.slice`), not inside
  the agent's unit: a unit whose cgroup enables controllers for children may hold no process
  itself (the no-internal-processes rule), so systemd 252 could not put a restarted agent
  back into it (EBUSY) while adopted apps still live below it. Apps outside the unit also
  outlive any agent restart. Only when the top is not writable does the agent fall back to
  its own (delegated, Delegate=yes) cgroup: it moves every process there (itself, nginx)
  into a leaf child `agent/` and enables memory, pids and cpu below; a restarted agent that
  finds itself in `agent/` uses the parent.
- cgroup v1 (this test machine): one hierarchy per controller (/sys/fs/cgroup/memory,
  pids, cpu). The memory limit is set on the leaf, pids and CPU on the app's cgroup.

A process joins its cgroups itself before it execs anything of the app's (agent/privexec.py
writes its pid into the `cgroup.procs` files `procs_files()` returns), so nothing can fork
out first. Memory: `memory` of paas.toml per instance as a hard limit (no swap beyond it);
without one, no hard limit (placement already counts only declared memory). An instance
killed by its limit is told apart from other deaths by the leaf's oom_kill counter.

Without cgroup access (an unprivileged local run, or no controller delegated) `detect()`
returns None: apps run without limits, and the agent says so once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent import procs
from agent.errors import AgentError
from common.names import check_app_name

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF = Path("/proc/self/cgroup")
AGENT_LEAF = "agent"
V1_CONTROLLERS = ("memory", "pids", "cpu")
V2_CONTROLLERS = ("memory", "pids", "cpu")


class CgroupError(AgentError):
    """A cgroup could not be made or configured."""


@dataclass(frozen=True)
class Limits:
    memory_mb: int | None = None  # per leaf (instance); None: no hard limit
    pids_max: int = 512  # per app
    cpu_weight: int = 100  # per app, 1..10000 (v2 cpu.weight; v1 shares = weight * 10.24)


def format_mb(memory_mb: int) -> str:
    """256 -> '256M', 2048 -> '2G' (as paas.toml writes it)."""
    if memory_mb >= 1024 and memory_mb % 1024 == 0:
        return f"{memory_mb // 1024}G"
    return f"{memory_mb}M"


class Cgroups:
    """The apps' cgroups below `bases` (one per hierarchy: v2 has one, v1 one per controller)."""

    def __init__(self, version: Literal[1, 2], bases: dict[str, Path]) -> None:
        for base in bases.values():  # never anything but a folder of our own
            if not base.name.startswith("paas-"):
                raise CgroupError(f"refusing {base} as the apps' cgroup: not named paas-*")
        self.version = version
        self.bases = bases  # controller (v1) or "unified" (v2) -> <agent cgroup>/paas-<id>

    # ---- discovery --------------------------------------------------------------------------

    @classmethod
    def detect(
        cls, name: str, *, root: Path = CGROUP_ROOT, proc_self: Path = PROC_SELF
    ) -> Cgroups | None:
        """The apps' cgroups, set up; None (logged once) when there is no usable cgroup.
        `name` (paas-<id>) is the folder made for them below the agent's own cgroup."""
        if not name.startswith("paas-") or "/" in name:
            raise CgroupError(f"bad cgroup folder name {name!r}")
        try:
            lines = proc_self.read_text().splitlines()
        except OSError as exc:
            log.warning("no cgroups (%s): apps run without memory, pids or CPU limits", exc)
            return None
        try:
            if (root / "cgroup.controllers").is_file():
                return cls._setup_v2(root, lines, name)
            return cls._setup_v1(root, lines, name)
        except (OSError, CgroupError) as exc:
            log.warning(
                "cannot manage cgroups under %s (%s): apps run without memory, pids or CPU limits",
                root,
                exc,
            )
            return None

    @classmethod
    def _setup_v2(cls, root: Path, lines: list[str], name: str) -> Cgroups:
        path = next((ln[3:] for ln in lines if ln.startswith("0::")), None)
        if path is None:
            raise CgroupError("no cgroup v2 entry in /proc/self/cgroup")
        own = root / path.lstrip("/")
        if own != root:
            top = cls._top_level_v2(root, name)
            if top is not None:
                return cls(2, {"unified": top})
        base = own.parent if own.name == AGENT_LEAF and (own.parent / name).is_dir() else own
        available = (base / "cgroup.controllers").read_text().split()
        missing = [c for c in V2_CONTROLLERS if c not in available]
        if missing:
            raise CgroupError(f"controllers {missing} are not delegated to {base}")
        leaf = base / AGENT_LEAF
        leaf.mkdir(exist_ok=True)
        # No internal processes: everything in our cgroup (us, nginx) moves to a leaf first.
        for pid in (base / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, OSError):
                (leaf / "cgroup.procs").write_text(pid)
        _enable(base)
        apps = base / name
        apps.mkdir(exist_ok=True)
        _enable(apps)
        log.info("app cgroups (v2) under %s", apps)
        return cls(2, {"unified": apps})

    @staticmethod
    def _top_level_v2(root: Path, name: str) -> Path | None:
        """`<root>/<name>` with memory, pids and cpu enabled below it, or None when the top of
        the hierarchy lacks them or is not ours to write (a read-only cgroupfs)."""
        available = (root / "cgroup.controllers").read_text().split()
        if any(c not in available for c in V2_CONTROLLERS):
            return None
        try:
            _enable(root)  # the root cgroup may hold processes and still enable controllers
            top = root / name
            top.mkdir(exist_ok=True)
            _enable(top)
        except OSError as exc:
            log.info("cannot use %s for app cgroups (%s); trying the agent's own", root, exc)
            return None
        log.info("app cgroups (v2) under %s", top)
        return top

    @classmethod
    def _setup_v1(cls, root: Path, lines: list[str], name: str) -> Cgroups:
        paths: dict[str, str] = {}
        for line in lines:
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                paths[controller] = path
        bases: dict[str, Path] = {}
        for controller in V1_CONTROLLERS:
            mount = root / controller
            if controller not in paths or not (mount / "cgroup.procs").is_file():
                raise CgroupError(f"no cgroup v1 {controller} hierarchy at {mount}")
            base = mount / paths[controller].lstrip("/") / name
            base.mkdir(exist_ok=True)
            bases[controller] = base
        log.info("app cgroups (v1) under %s", ", ".join(str(b) for b in bases.values()))
        return cls(1, bases)

    # ---- per app / per leaf -----------------------------------------------------------------

    def app_paths(self, app: str) -> dict[str, Path]:
        check_app_name(app)
        return {name: base / app for name, base in self.bases.items()}

    def prepare(self, app: str, leaf: str, limits: Limits) -> tuple[Path, ...]:
        """Make (or update) the app's and the leaf's cgroups; the cgroup.procs files a
        process of the leaf must join."""
        _check_leaf(leaf)
        try:
            if self.version == 2:
                return self._prepare_v2(app, leaf, limits)
            return self._prepare_v1(app, leaf, limits)
        except OSError as exc:
            raise CgroupError(f"could not set up the cgroup of {app}/{leaf}: {exc}") from exc

    def _prepare_v2(self, app: str, leaf: str, limits: Limits) -> tuple[Path, ...]:
        group = self.app_paths(app)["unified"]
        group.mkdir(exist_ok=True)
        _enable(group)
        _write(group / "pids.max", str(limits.pids_max))
        _write(group / "cpu.weight", str(limits.cpu_weight))
        path = group / leaf
        path.mkdir(exist_ok=True)
        memory = str(limits.memory_mb << 20) if limits.memory_mb else "max"
        _write(path / "memory.max", memory)
        if (path / "memory.swap.max").exists():
            _write(path / "memory.swap.max", "0" if limits.memory_mb else "max")
        return (path / "cgroup.procs",)

    def _prepare_v1(self, app: str, leaf: str, limits: Limits) -> tuple[Path, ...]:
        groups = self.app_paths(app)
        for group in groups.values():
            group.mkdir(exist_ok=True)
        _write(groups["pids"] / "pids.max", str(limits.pids_max))
        _write(groups["cpu"] / "cpu.shares", str(max(2, limits.cpu_weight * 1024 // 100)))
        path = groups["memory"] / leaf
        path.mkdir(exist_ok=True)
        memory = str(limits.memory_mb << 20) if limits.memory_mb else "-1"
        swap = path / "memory.memsw.limit_in_bytes"
        # memsw must stay >= the memory limit: lower it after, raise it before.
        if limits.memory_mb is None and swap.exists():
            _write(swap, "-1")
        _write(path / "memory.limit_in_bytes", memory)
        if limits.memory_mb is not None and swap.exists():
            _write(swap, memory)
        return (
            path / "cgroup.procs",
            groups["pids"] / "cgroup.procs",
            groups["cpu"] / "cgroup.procs",
        )

    def oom_kills(self, app: str, leaf: str) -> int:
        """How many processes of the leaf its memory limit killed (0 when unknown)."""
        _check_leaf(leaf)
        if self.version == 2:
            path, key = self.app_paths(app)["unified"] / leaf / "memory.events", "oom_kill"
        else:
            path, key = self.app_paths(app)["memory"] / leaf / "memory.oom_control", "oom_kill"
        try:
            text = path.read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
        return 0

    def remove(self, app: str, leaf: str | None = None) -> None:
        """rmdir the leaf (or every leaf) and then the app's cgroup once they are empty; a
        cgroup that still has processes stays (EBUSY), to be removed on a later call."""
        for group in self.app_paths(app).values():
            leaves = [group / leaf] if leaf is not None else _children(group)
            for path in leaves:
                _rmdir(path)
            if not _children(group):
                _rmdir(group)

    def cleanup(self) -> None:
        """At a clean agent shutdown: SIGKILL what is still in our cgroups (an app process
        that left its process group, so its instance's stop did not reach it) and remove
        them, the base folders included. The apps' cgroups live outside the agent's unit,
        so nothing else would end such a process."""
        leaves = [
            leaf for base in self.bases.values() for g in _children(base) for leaf in _children(g)
        ]
        pids = {pid for leaf in leaves for pid in _procs(leaf)}
        for pid in pids:
            with contextlib.suppress(procs.ProcessError):  # not ours to signal: left as is
                procs.signal_pid(pid, signal.SIGKILL)
        if pids:
            log.info("killed %d app process(es) left in their cgroups", len(pids))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(_procs(leaf) for leaf in leaves):
            time.sleep(0.05)
        for base in self.bases.values():
            for group in _children(base):
                for leaf in _children(group):
                    _rmdir(leaf)
                _rmdir(group)
            _rmdir(base)


def _check_leaf(leaf: str) -> None:
    if not leaf or "/" in leaf or leaf.startswith(".") or len(leaf) > 64:
        raise CgroupError(f"bad cgroup leaf name {leaf!r}")


def _children(group: Path) -> list[Path]:
    try:
        return [p for p in group.iterdir() if p.is_dir()]
    except OSError:
        return []


def _procs(group: Path) -> list[int]:
    try:
        return [int(pid) for pid in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            log.warning("could not remove cgroup %s: %s", path, exc)


def _enable(group: Path) -> None:
    """Enable memory, pids and cpu for the children of a v2 cgroup."""
    control = group / "cgroup.subtree_control"
    enabled = control.read_text().split()
    wanted = [c for c in V2_CONTROLLERS if c not in enabled]
    if wanted:
        control.write_text(" ".join(f"+{c}" for c in wanted))


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class LeafCgroup:
    """One instance's (or a build's, or one-off runs') cgroup, as a launcher uses it: made
    fresh before each start, asked after an exit whether its memory limit killed it."""

    def __init__(self, cgroups: Cgroups, app: str, leaf: str, limits: Limits) -> None:
        _check_leaf(leaf)
        self.cgroups, self.app, self.leaf, self.limits = cgroups, app, leaf, limits
        self._oom_seen = cgroups.oom_kills(app, leaf)

    def prepare(self) -> tuple[Path, ...]:
        files = self.cgroups.prepare(self.app, self.leaf, self.limits)
        self._oom_seen = self.cgroups.oom_kills(self.app, self.leaf)
        return files

    def exit_note(self) -> str | None:
        """'out of memory (limit 64M)' when the limit killed a process since the start."""
        kills = self.cgroups.oom_kills(self.app, self.leaf)
        if kills <= self._oom_seen:
            return None
        self._oom_seen = kills
        limit = self.limits.memory_mb
        return f"out of memory (limit {format_mb(limit)})" if limit else "out of memory"

    def remove(self) -> None:
        self.cgroups.remove(self.app, self.leaf)
