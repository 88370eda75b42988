"""An all-in-one cluster on 127.0.0.1: one registry, one machine agent, one frontend agent.

Each runs as a detached process (its own session, output in `<state>/logs/<name>.log`); the
pids live in `<state>/pids.json`, so `down()` — from this process or a later one — stops
exactly those processes and nothing else. Tests and the benchmark use it with free ports.

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
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from cli.api import RegistryClient
from cli.config import Login
from cli.errors import CliError, ClusterError
from common.fsutil import atomic_write

REGISTRY = "registry"
MACHINE = "machine-1"
FRONTEND = "frontend-1"
STOP_ORDER = (FRONTEND, MACHINE, REGISTRY)
REGISTRY_STOP_S = 5.0  # agents first: they drain apps while it answers


@dataclass(frozen=True)
class Ports:
    registry: int = 8070
    http: int = 8080
    https: int = 8443
    proxy: int = 8081
    agent_api: int = 8071  # the machine agent's API: logs, one-off runs, /metrics (issue 8)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _alive(pid: int, create_time: float | None = None) -> bool:
    """True if `pid` runs and is the process we recorded (not a reused pid or a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


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


class LocalCluster:
    def __init__(
        self,
        state_dir: Path | str,
        *,
        ports: Ports | None = None,
        domain: str = "localhost",
        host: str = "127.0.0.1",
        bin_dir: Path | None = None,
        ready_timeout: float = 60.0,
        service_ports: tuple[int, int] = (20000, 29999),
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.service_ports = service_ports  # the registry's range of per-app service ports
        self.ports = ports or Ports()
        self.domain = domain
        self.host = host
        self.bin_dir = bin_dir or Path(sys.executable).parent
        self.ready_timeout = ready_timeout
        self._adopt_recorded()

    # ---- paths and facts ---------------------------------------------------------------

    @property
    def pids_file(self) -> Path:
        return self.state_dir / "pids.json"

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

    # ---- recorded processes ------------------------------------------------------------

    def _read_record(self) -> dict[str, Any]:
        try:
            return json.loads(self.pids_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read {self.pids_file}: {exc}") from exc

    def _adopt_recorded(self) -> None:
        """A running cluster keeps the ports and domain it was started with."""
        record = self._read_record()
        if record.get("ports") and self.running():
            self.ports = Ports(**record["ports"])
            self.domain = record.get("domain", self.domain)

    def processes(self) -> dict[str, dict[str, Any]]:
        return self._read_record().get("processes", {})

    def running(self) -> dict[str, int]:
        """Recorded processes that are still alive, by name."""
        return {
            name: p["pid"]
            for name, p in self.processes().items()
            if _alive(p["pid"], p.get("create_time"))
        }

    def _record(self, processes: dict[str, dict[str, Any]]) -> None:
        private_dir(self.state_dir)
        body = {"processes": processes, "ports": asdict(self.ports), "domain": self.domain}
        write_private(self.pids_file, json.dumps(body, indent=2) + "\n")

    # ---- up ----------------------------------------------------------------------------

    def up(self) -> bool:
        """Start everything and wait until both hosts are up; False if it already ran."""
        alive = self.running()
        if alive and set(alive) == set(STOP_ORDER):
            return False
        if alive:
            self.down()  # half a cluster: restart it cleanly
        for what, port in asdict(self.ports).items():
            if not port_free(port, self.host):
                raise ClusterError(f"port {port} ({what}) on {self.host} is already in use")
        private_dir(self.state_dir)
        private_dir(self.logs_dir)
        try:
            self._init_registry()
            self._start(REGISTRY, self._registry_argv())
            self._wait_registry()
            self._start(MACHINE, self._agent_argv("machine", MACHINE))
            self._start(FRONTEND, self._agent_argv("frontend", FRONTEND))
            self._wait_hosts()
        except BaseException:
            self.down()
            raise
        return True

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

    def _init_registry(self) -> None:
        state = private_dir(self.state_dir / "registry")
        if self.tokens_file.exists():
            os.chmod(self.tokens_file, 0o600)
            return
        argv = [self._exe("paas-registry"), "init", "--state-dir", str(state), "--json"]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=60, env=self._child_env()
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError("`paas-registry init` did not finish in 60s") from exc
        if done.returncode != 0:
            raise ClusterError(f"`paas-registry init` failed: {done.stderr.strip()[-800:]}")
        try:
            tokens = json.loads(done.stdout)
            body = {"admin_token": tokens["admin_token"], "join_token": tokens["join_token"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise ClusterError(f"`paas-registry init` printed no tokens: {done.stdout!r}") from exc
        write_private(self.tokens_file, json.dumps(body))

    def _registry_argv(self) -> list[str]:
        return [
            self._exe("paas-registry"), "serve",
            "--state-dir", str(self.state_dir / "registry"),
            "--host", self.host,
            "--port", str(self.ports.registry),
            "--domain", self.domain,
            "--public-https-port", str(self.ports.https),
            "--service-port-min", str(self.service_ports[0]),
            "--service-port-max", str(self.service_ports[1]),
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
            ports = ["--proxy-port", str(self.ports.proxy), "--api-port", str(self.ports.agent_api)]
            return [*argv, *ports]
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
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = None
        processes = self.processes()
        processes[name] = {"pid": proc.pid, "create_time": created, "argv": argv}
        self._record(processes)

    def _check_alive(self, name: str) -> None:
        p = self.processes().get(name)
        if p is None or not _alive(p["pid"], p.get("create_time")):
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

    def _wait_hosts(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        states: dict[str, str] = {}
        with self.client() as client:
            while True:
                for name in (MACHINE, FRONTEND):
                    self._check_alive(name)
                try:
                    states = {h.name: h.state for h in client.list_hosts()}
                except CliError:
                    states = {}
                if states.get(MACHINE) == "up" and states.get(FRONTEND) == "up":
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"the hosts did not come up within {self.ready_timeout:.0f}s"
                        f" (seen: {states or 'none'}); see the logs in {self.logs_dir}"
                    )
                time.sleep(0.2)

    # ---- down --------------------------------------------------------------------------

    def down(self, *, timeout: float = 20.0) -> list[str]:
        """SIGTERM each recorded process (agents first), wait, SIGKILL what remains."""
        processes = self.processes()
        stopped: list[str] = []
        order = [n for n in STOP_ORDER if n in processes] + [
            n for n in processes if n not in STOP_ORDER
        ]
        for name in order:
            p = processes[name]
            # The registry only holds SQLite (crash-safe); do not wait long on its long polls.
            wait = min(timeout, REGISTRY_STOP_S) if name == REGISTRY else timeout
            if self._stop(p["pid"], p.get("create_time"), timeout=wait):
                stopped.append(name)
        self.pids_file.unlink(missing_ok=True)
        return stopped

    @staticmethod
    def _stop(pid: int, create_time: float | None, *, timeout: float) -> bool:
        if not _alive(pid, create_time):
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid, create_time):
                return True
            time.sleep(0.1)
        kill_tree(pid)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _alive(pid, create_time):
            time.sleep(0.05)
        return True

    # ---- faults (tests): kill one recorded process, start it again ----------------------

    def kill(self, name: str, sig: int = signal.SIGKILL, *, timeout: float = 10.0) -> int:
        """Send `sig` to the recorded process `name` only (not its children); wait until it is
        gone. Returns its pid."""
        p = self.processes().get(name)
        if p is None or not _alive(p["pid"], p.get("create_time")):
            raise ClusterError(f"{name} is not running")
        os.kill(p["pid"], sig)
        deadline = time.monotonic() + timeout
        while _alive(p["pid"], p.get("create_time")):
            if time.monotonic() > deadline:
                raise ClusterError(f"{name} (pid {p['pid']}) did not exit after signal {sig}")
            time.sleep(0.05)
        return int(p["pid"])

    def restart(self, name: str) -> None:
        """Start `name` again with its recorded command line (same ports and state folder)."""
        p = self.processes().get(name)
        if p is None:
            raise ClusterError(f"{name} was never started here")
        if _alive(p["pid"], p.get("create_time")):
            raise ClusterError(f"{name} is still running (pid {p['pid']})")
        self._start(name, list(p["argv"]))
        if name == REGISTRY:
            self._wait_registry()

    def status(self) -> dict[str, Any]:
        processes = self.processes()
        return {
            "state_dir": str(self.state_dir),
            "registry_url": self.registry_url,
            "ports": asdict(self.ports),
            "domain": self.domain,
            "processes": {
                name: {"pid": p["pid"], "alive": _alive(p["pid"], p.get("create_time"))}
                for name, p in processes.items()
            },
        }
