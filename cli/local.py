"""An all-in-one cluster on 127.0.0.1: one registry, one machine agent, one frontend agent.

Each runs as a detached process (its own session, output in `<state>/logs/<name>.log`),
recorded in `<state>/pids.json` (pid + start in clock ticks since boot). Records alone go
stale (a component killed and restarted, an agent that adopted nginx and apps it never
started), so every process of the cluster is also found from the state folder itself
(cli/local_procs.py): `down()` stops all of them, agents first and gracefully, and `up()` on
a half-running cluster starts only what is missing (restarted agents adopt their nginx,
HAProxy and apps). Ports and port ranges live in `<state>/cluster.json`, kept across
`down`/`up`. Tests and the benchmark use it with free ports; two clusters run side by side.

The state folder holds the registry's database and the cluster's tokens, and the agents run
as root: every folder here is 0700 and every file 0600 (the machine agent may add o+x to the
state folder so app users pass through to their own folders, never read or list it), and
no secret is ever on a command line (`ps` shows argv to every local user): the agents get
the join token through their environment (PAAS_JOIN_TOKEN), which only root can read.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from cli.api import RegistryClient
from cli.config import Login
from cli.errors import CliError, ClusterError
from cli.local_procs import (
    Member,
    claimed_ranges,
    claimed_uid_ranges,
    processes_under,
    same_process,
    start_ticks,
    terminate,
)
from common.fsutil import atomic_write

REGISTRY = "registry"
MACHINE = "machine-1"
FRONTEND = "frontend-1"
STOP_ORDER = (FRONTEND, MACHINE, REGISTRY)
START_ORDER = (REGISTRY, MACHINE, FRONTEND)
REGISTRY_STOP_S = 5.0  # agents first: they drain apps while it answers
LEFTOVER_STOP_S = 10.0  # what no agent stopped: orphaned nginx, HAProxy, apps
RANGE_SIZE = 500  # ports in a range picked for the user (app instances, service ports)
RANGE_LOW, RANGE_HIGH = 10000, 32000  # below Linux's ephemeral ports (32768-60999)
UID_BLOCK = 1000  # app uids of one local cluster: one per app
# Above the agent's default block (70000-79999): that one belongs to the agents started
# without --app-uids (a host's own, a test's), whose apps must never share a uid with ours.
UID_LOW, UID_HIGH = 80000, 99999
OWNER = {"nginx": MACHINE, "app": MACHINE, "haproxy": FRONTEND}  # who adopts an orphan


@dataclass(frozen=True)
class Ports:
    """`make demo`'s ports are the defaults; every one can be chosen."""

    registry: int = 8070
    http: int = 8080
    https: int = 8443
    proxy: int = 8081
    agent_api: int = 8071  # the machine agent's API: logs, one-off runs, /metrics


PORTS_OF = {REGISTRY: ("registry",), MACHINE: ("proxy", "agent_api"), FRONTEND: ("http", "https")}


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_range(
    size: int = RANGE_SIZE,
    *,
    low: int = RANGE_LOW,
    high: int = RANGE_HIGH,
    avoid: tuple[tuple[int, int], ...] = (),
) -> tuple[int, int]:
    """`size` consecutive ports free now, overlapping none of `avoid`: a cluster's app or
    service ports, distinct from a neighbour's (pass `claimed_ranges()` to keep clear of
    every cluster running here).

    The search starts at a random place and walks the whole of [low, high) from there, each
    port probed at most once: a busy port or a claimed range is jumped over, so a free block
    is found whenever one exists, however crowded the rest is."""
    last_start = high - size  # the highest start whose block still ends below `high`
    if last_start < low:
        raise ClusterError(f"no {size} consecutive ports fit in {low}-{high}")
    first = random.Random().randint(low, last_start)
    for segment in ((first, last_start), (low, first - 1)):
        found = _free_block(size, *segment, avoid)
        if found is not None:
            return found
    raise ClusterError(f"no {size} free consecutive ports in {low}-{high}")


def _free_block(
    size: int, start: int, last_start: int, avoid: tuple[tuple[int, int], ...]
) -> tuple[int, int] | None:
    """The first free block starting in [start, last_start], or None."""
    while start <= last_start:
        end = start + size - 1
        claimed = [b for a, b in avoid if start <= b and a <= end]
        if claimed:
            start = max(claimed) + 1
            continue
        busy = next((port for port in range(start, end + 1) if not port_free(port)), None)
        if busy is None:
            return start, end
        start = busy + 1
    return None


def free_uid_block(avoid: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """A block of UID_BLOCK app uids overlapping none of `avoid` (the blocks of the machine
    agents running here, `claimed_uid_ranges()`). Picked at random among the free ones, so
    two clusters started at the same moment, neither seeing the other's agent yet, rarely
    pick the same."""
    claimed = list(avoid)
    free = [
        (low, low + UID_BLOCK - 1)
        for low in range(UID_LOW, UID_HIGH + 1 - UID_BLOCK + 1, UID_BLOCK)
        if all(b < low or a > low + UID_BLOCK - 1 for a, b in claimed)
    ]
    if free:
        return random.Random().choice(free)
    raise ClusterError(
        f"every block of {UID_BLOCK} app uids in {UID_LOW}-{UID_HIGH} is taken by a running"
        " cluster; stop one or pass --app-uids"
    )


def _alive(pid: int, create_time: float | None = None, ticks: int | None = None) -> bool:
    """True if `pid` runs and is the process we recorded (not a reused pid or a zombie).
    `ticks` (start since boot) is exact; `create_time` (wall clock, moves when the clock is
    stepped) is only for records written before ticks were kept."""
    if not same_process(pid, ticks):
        return False
    if ticks is not None or create_time is None:
        return True
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def _record_alive(p: dict[str, Any]) -> bool:
    return _alive(p["pid"], p.get("create_time"), p.get("start_ticks"))


def kill_tree(pid: int) -> None:
    """SIGKILL a process we started and its descendants (nginx, HAProxy, apps): a killed
    agent cannot stop its children, and they would outlive it holding ports."""
    try:
        proc = psutil.Process(pid)
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.kill()


def _listener(port: int) -> int | None:
    """The pid listening on TCP `port` (any address), if this user may see it."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


def private_dir(path: Path) -> Path:
    """mkdir -p, then no read or write for group and others (0700; an o+x that the machine
    agent added for its app users is kept: it lets them pass, not list)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o066:
        os.chmod(path, mode & ~0o066)
    return path


def write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically (never readable by others, even for an instant)."""
    atomic_write(path, text, mode=0o600)


def _open_log(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # a log an older version left 0644
    return fd


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class UpReport:
    """What `up()` found running, what it started, and which busy ports are the cluster's own."""

    found: list[Member] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:  # True when something was started (False: all already ran)
        return bool(self.started)


class LocalCluster:
    def __init__(
        self,
        state_dir: Path | str,
        *,
        ports: Ports | None = None,
        domain: str | None = None,
        host: str = "127.0.0.1",
        bin_dir: Path | None = None,
        ready_timeout: float = 60.0,
        service_ports: tuple[int, int] | None = None,
        app_ports: tuple[int, int] | None = None,
        app_uids: tuple[int, int] | None = None,
    ) -> None:
        """Unset ports come from `<state>/cluster.json` (the last `up`), else `Ports()`; unset
        ranges from there, else free ranges picked at `up`. A running cluster keeps its own."""
        self.state_dir = Path(state_dir).absolute()
        self.host = host
        self.bin_dir = bin_dir or Path(sys.executable).parent
        self.ready_timeout = ready_timeout
        saved = self._read_settings()
        if saved and self.running():
            ports, domain, service_ports, app_ports, app_uids = None, None, None, None, None
        self.ports = ports or (Ports(**saved["ports"]) if saved.get("ports") else Ports())
        self.domain = domain or saved.get("domain") or "localhost"
        self.service_ports = service_ports or _pair(saved.get("service_ports"))
        self.app_ports = app_ports or _pair(saved.get("app_ports"))
        self.app_uids = app_uids or _pair(saved.get("app_uids"))

    # ---- paths and facts ---------------------------------------------------------------

    @property
    def pids_file(self) -> Path:
        return self.state_dir / "pids.json"

    @property
    def settings_file(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def tokens_file(self) -> Path:
        return self.state_dir / "tokens.json"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def registry_url(self) -> str:
        return f"http://{self.host}:{self.ports.registry}"

    def app_url(self, app: str) -> str:
        return f"https://{app}.{self.domain}:{self.ports.https}/"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def tokens(self) -> dict[str, str]:
        try:
            return json.loads(self.tokens_file.read_text())
        except (OSError, ValueError) as exc:
            raise ClusterError(f"no registry tokens in {self.tokens_file}: {exc}") from exc

    def login(self) -> Login:
        return Login(registry_url=self.registry_url, token=self.tokens()["admin_token"])

    def client(self) -> RegistryClient:
        login = self.login()
        return RegistryClient(login.registry_url, login.token)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a `paas` subprocess that talks to this cluster."""
        env = dict(os.environ if base is None else base)
        login = self.login()
        env.update(PAAS_REGISTRY_URL=login.registry_url, PAAS_TOKEN=login.token)
        return env

    # ---- settings and recorded processes -----------------------------------------------

    def _read_json(self, path: Path) -> dict[str, Any]:
        try:
            found = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read {path}: {exc}") from exc
        return found if isinstance(found, dict) else {}

    def _read_settings(self) -> dict[str, Any]:
        saved = self._read_json(self.settings_file)
        if not saved:  # a cluster started before cluster.json: its pids.json had the ports
            old = self._read_json(self.pids_file)
            saved = {k: old[k] for k in ("ports", "domain") if k in old}
        return saved

    def _save_settings(self) -> None:
        private_dir(self.state_dir)
        body = {
            "ports": asdict(self.ports),
            "domain": self.domain,
            "service_ports": list(self.service_ports) if self.service_ports else None,
            "app_ports": list(self.app_ports) if self.app_ports else None,
            "app_uids": list(self.app_uids) if self.app_uids else None,
        }
        write_private(self.settings_file, json.dumps(body, indent=2) + "\n")

    def processes(self) -> dict[str, dict[str, Any]]:
        return self._read_json(self.pids_file).get("processes", {})

    def _record(self, processes: dict[str, dict[str, Any]]) -> None:
        private_dir(self.state_dir)
        body = {"processes": processes, "ports": asdict(self.ports), "domain": self.domain}
        write_private(self.pids_file, json.dumps(body, indent=2) + "\n")

    def members(self) -> list[Member]:
        """Every live process of this cluster, whatever started it (cli/local_procs.py)."""
        found = processes_under([self.state_dir], tools=False)
        seen = {m.pid for m in found}
        for name, p in self.processes().items():  # a recorded one that runs elsewhere
            if p["pid"] not in seen and _record_alive(p):
                found.append(Member(p["pid"], p.get("start_ticks"), 0, name, (), ""))
        return found

    def components(self, members: list[Member] | None = None) -> dict[str, Member]:
        """The registry and the agents that run now, by name."""
        found = self.members() if members is None else members
        return {m.role: m for m in found if m.role in START_ORDER}

    def running(self) -> dict[str, int]:
        """The registry and agents alive now, by name (pids)."""
        return {name: m.pid for name, m in self.components().items()}

    def _note_running(self, components: dict[str, Member]) -> None:
        """Record components found running that the record lacks or has stale."""
        processes = self.processes()
        for name, m in components.items():
            p = processes.get(name)
            if p is None or p["pid"] != m.pid or not _record_alive(p):
                argv = list(p["argv"]) if p and p.get("argv") else list(m.cmdline)
                processes[name] = {"pid": m.pid, "start_ticks": m.ticks, "argv": argv}
        self._record(processes)

    # ---- up ----------------------------------------------------------------------------

    def up(self) -> UpReport:
        """Start what is missing and wait until both hosts report; an agent started next to
        its orphaned nginx, HAProxy or apps adopts them. Falsy if everything already ran."""
        found = self.members()
        running = self.components(found)
        report = UpReport(found=found)
        if all(name in running for name in START_ORDER):
            self._note_running(running)
            return report
        missing = [name for name in START_ORDER if name not in running]
        report.notes = self._check_ports(missing, found)
        if self.service_ports is None or self.app_ports is None:
            taken = [*claimed_ranges(), *filter(None, [self.service_ports, self.app_ports])]
            if self.service_ports is None:
                self.service_ports = free_range(avoid=tuple(taken))
                taken.append(self.service_ports)
            if self.app_ports is None:
                self.app_ports = free_range(avoid=tuple(taken))
        if self.app_uids is None:
            self.app_uids = free_uid_block(claimed_uid_ranges())
        self._save_settings()
        private_dir(self.logs_dir)
        self._note_running(running)
        since = time.time()
        try:
            if REGISTRY in missing:
                self._prepare_registry()
                self._start(REGISTRY, self._registry_argv())
                report.started.append(REGISTRY)
            self._wait_registry()
            for name, role in ((MACHINE, "machine"), (FRONTEND, "frontend")):
                if name in missing:
                    self._start(name, self._agent_argv(role, name))
                    report.started.append(name)
            self._wait_hosts(fresh={n for n in report.started if n != REGISTRY}, since=since)
        except BaseException:
            if running:  # stop only what this call started; the rest ran before it
                started = self.components()
                terminate([started[n] for n in report.started if n in started], timeout=10)
            else:
                self.down()
            raise
        return report

    def _check_ports(self, missing: list[str], found: list[Member]) -> list[str]:
        """Ports of the components to start must be free, or held by this cluster's own
        process that the component adopts (its orphaned nginx or HAProxy)."""
        ours = {m.pid: m for m in found}
        notes = []
        for name in missing:
            for what in PORTS_OF[name]:
                port = getattr(self.ports, what)
                if port_free(port, self.host):
                    continue
                holder = ours.get(_listener(port) or -1)
                if holder is None:
                    raise ClusterError(f"port {port} ({what}) on {self.host} is already in use")
                notes.append(
                    f"port {port} ({what}) is held by this cluster's {holder.describe()},"
                    f" which {name} adopts"
                )
        return notes

    def _exe(self, name: str) -> str:
        local = self.bin_dir / name
        if local.exists():
            return str(local)
        found = shutil.which(name)
        if not found:
            raise ClusterError(f"cannot find the `{name}` program (is the project installed?)")
        return found

    def _child_env(self) -> dict[str, str]:
        # Our PAAS_* (CLI login, PAAS_CONFIG) must not leak into the agents' settings.
        return {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}

    def _prepare_registry(self) -> None:
        """Its folder, private; the registry issues the tokens itself on its first start
        (`serve --init-tokens`), and they stay readable by root only."""
        private_dir(self.state_dir / "registry")
        if self.tokens_file.exists():
            os.chmod(self.tokens_file, 0o600)

    def _registry_argv(self) -> list[str]:
        low, high = self.service_ports or (20000, 29999)
        return [
            self._exe("paas-registry"), "serve",
            "--state-dir", str(self.state_dir / "registry"),
            "--host", self.host,
            "--port", str(self.ports.registry),
            "--domain", self.domain,
            "--public-https-port", str(self.ports.https),
            "--service-port-min", str(low),
            "--service-port-max", str(high),
            "--init-tokens", str(self.tokens_file),
        ]  # fmt: skip

    def _agent_argv(self, role: str, name: str) -> list[str]:
        """No secret here: argv is public (`ps`); the join token goes in the environment."""
        argv = [
            self._exe("paas-agent"), "--role", role,
            "--registry-url", self.registry_url,
            "--name", name,
            "--address", self.host,
            "--state-dir", str(self.state_dir / name),
        ]  # fmt: skip
        if role == "machine":
            argv += ["--proxy-port", str(self.ports.proxy), "--api-port", str(self.ports.agent_api)]
            if self.app_ports:
                argv += ["--port-range", f"{self.app_ports[0]}-{self.app_ports[1]}"]
            if self.app_uids:
                argv += ["--app-uids", f"{self.app_uids[0]}-{self.app_uids[1]}"]
            return argv
        return [*argv, "--http-port", str(self.ports.http), "--https-port", str(self.ports.https)]

    def _start(self, name: str, argv: list[str]) -> None:
        env = self._child_env()
        if name != REGISTRY:  # used once, at the first join; then the agent keeps its token
            env["PAAS_JOIN_TOKEN"] = self.tokens()["join_token"]
        private_dir(self.logs_dir)
        with os.fdopen(_open_log(self.log_path(name)), "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=self.state_dir,
            )
        processes = self.processes()
        processes[name] = {"pid": proc.pid, "start_ticks": start_ticks(proc.pid), "argv": argv}
        self._record(processes)

    def _check_alive(self, name: str) -> None:
        p = self.processes().get(name)
        if p is None or not _record_alive(p):
            raise ClusterError(
                f"{name} exited during start-up; last lines of {self.log_path(name)}:\n"
                + _tail(self.log_path(name))
            )

    def _wait_registry(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        with RegistryClient(self.registry_url, "", timeout=2.0) as client:
            while True:
                self._check_alive(REGISTRY)
                try:
                    if client.health():
                        return
                except CliError:
                    pass
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"the registry did not answer on {self.registry_url}"
                        f" within {self.ready_timeout:.0f}s; see {self.log_path(REGISTRY)}"
                    )
                time.sleep(0.2)

    def _wait_hosts(self, *, fresh: set[str] | None = None, since: float = 0.0) -> None:
        """Both hosts up; those in `fresh` (just started) must have reported since `since`."""
        deadline = time.monotonic() + self.ready_timeout
        states: dict[str, str] = {}
        with self.client() as client:
            while True:
                for name in (MACHINE, FRONTEND):
                    self._check_alive(name)
                try:
                    hosts = {h.name: h for h in client.list_hosts()}
                except CliError:
                    hosts = {}
                states = {name: h.state for name, h in hosts.items()}
                if all(
                    (h := hosts.get(name)) is not None
                    and h.state == "up"
                    and (
                        name not in (fresh or set())
                        or (h.last_heartbeat is not None and h.last_heartbeat.timestamp() >= since)
                    )
                    for name in (MACHINE, FRONTEND)
                ):
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"the hosts did not come up within {self.ready_timeout:.0f}s"
                        f" (seen: {states or 'none'}); see the logs in {self.logs_dir}"
                    )
                time.sleep(0.2)

    # ---- down --------------------------------------------------------------------------

    def down(self, *, timeout: float = 20.0) -> list[Member]:
        """SIGTERM the frontend agent, then the machine agent (each stops its proxy and apps),
        then the registry; then whatever of the cluster still runs (what a killed agent left:
        nginx, HAProxy, apps). SIGKILL what outlives its wait. Returns what it stopped."""
        running = self.components()
        stopped: list[Member] = []
        for name in STOP_ORDER:
            if name in running:
                # The registry only holds SQLite (crash-safe); do not wait long on its polls.
                wait = min(timeout, REGISTRY_STOP_S) if name == REGISTRY else timeout
                stopped += terminate([running[name]], timeout=wait)
        stopped += terminate(self.members(), timeout=LEFTOVER_STOP_S)
        self.pids_file.unlink(missing_ok=True)
        return stopped

    # ---- faults (tests): kill one recorded process, start it again ----------------------

    def kill(self, name: str, sig: int = signal.SIGKILL, *, timeout: float = 10.0) -> int:
        """Send `sig` to the process `name` only (not its children); wait until it is gone.
        Returns its pid."""
        member = self.components().get(name)
        if member is None:
            raise ClusterError(f"{name} is not running")
        os.kill(member.pid, sig)
        deadline = time.monotonic() + timeout
        while member.alive():
            if time.monotonic() > deadline:
                raise ClusterError(f"{name} (pid {member.pid}) did not exit after signal {sig}")
            time.sleep(0.05)
        return member.pid

    def restart(self, name: str) -> None:
        """Start `name` again with its recorded command line (same ports and state folder)."""
        p = self.processes().get(name)
        if p is None:
            raise ClusterError(f"{name} was never started here")
        running = self.components()
        if name in running:
            raise ClusterError(f"{name} is still running (pid {running[name].pid})")
        self._start(name, list(p["argv"]))
        if name == REGISTRY:
            self._wait_registry()

    def status(self) -> dict[str, Any]:
        """Each component alive or not, and every other process of the cluster; an `orphan`
        is one whose agent is not running (a restarted agent adopts it)."""
        found = self.members()
        running = self.components(found)
        recorded = self.processes()
        names = list(START_ORDER) if recorded or found else []
        processes = {}
        for name in [*names, *(n for n in recorded if n not in names)]:
            member = running.get(name)
            pid = member.pid if member else recorded.get(name, {}).get("pid")
            processes[name] = {"pid": pid, "alive": member is not None}
        others = [
            {
                "pid": m.pid,
                "role": m.role,
                "owner": OWNER.get(m.role),
                "orphan": OWNER.get(m.role) not in running,
                "command": m.command(),
                "cwd": m.cwd,
            }
            for m in found
            if m.role not in START_ORDER
        ]
        return {
            "state_dir": str(self.state_dir),
            "registry_url": self.registry_url,
            "ports": asdict(self.ports),
            "service_ports": self.service_ports,
            "app_ports": self.app_ports,
            "app_uids": self.app_uids,
            "domain": self.domain,
            "processes": processes,
            "others": others,
        }


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None
