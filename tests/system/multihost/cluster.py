"""N real hosts on this machine: a registry, a frontend and machine agents, each on its own
address of a `Network` (a namespace per host, or 127.0.0.N), with their nginx and HAProxy.

Kill a host with `kill_host` (every process of it, SIGKILL), cut it off with the network's
`cut`/`restore`. `close()` stops everything this cluster started, by pid, and is safe to call
after any failure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from agent.machine.run.runrecords import stray_groups
from cli.api import RegistryClient
from common.registry_tls import RegistryTrust, parse_pins
from tests.support.isolation_support import uid_range
from tests.support.ports import free_port
from tests.system.multihost.net import Network, Node

BIN = Path(sys.executable).parent
REGISTRY, FRONTEND = "registry", "frontend"
HEARTBEAT_S = 0.5
TTL_S = 2.0


@dataclass
class Started:
    node: Node
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class MultiHostCluster:
    network: Network
    state: Path
    machines: list[str]
    domain: str = "localhost"
    procs: dict[str, Started] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    # Each machine's app uids: test uids of this worker (tests/support/isolation_support.py),
    # never the agents' default block, which a local cluster's apps may run as.
    app_uids: dict[str, tuple[int, int]] = field(default_factory=dict)

    # ---- facts -------------------------------------------------------------------------

    @property
    def registry_url(self) -> str:
        return f"https://{self.network.nodes[REGISTRY].address}:{self.ports[REGISTRY]}"

    @property
    def trust(self) -> RegistryTrust:
        """The registry's certificate pinned, as agents and the CLI pin it (issue 14)."""
        return RegistryTrust(pins=parse_pins(self.tokens["registry_fingerprint"]))

    @property
    def https_url(self) -> str:
        return f"https://{self.network.nodes[FRONTEND].address}:{self.ports['https']}"

    def env(self) -> dict[str, str]:
        """For a `paas` subprocess that talks to this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}
        env.update(PAAS_REGISTRY_URL=self.registry_url, PAAS_TOKEN=self.tokens["admin_token"])
        env.update(PAAS_REGISTRY_FINGERPRINT=self.tokens["registry_fingerprint"])
        return env

    def routing(self) -> dict[str, set[str]]:
        """App -> the hosts the registry's routing table sends it to."""
        headers = {"Authorization": f"Bearer {self.tokens['admin_token']}"}
        table = httpx.get(
            f"{self.registry_url}/v1/routing",
            headers=headers,
            timeout=5,
            verify=self.trust.ssl_context(),
        ).json()
        return {a["name"]: {s["host"] for s in a["servers"]} for a in table["apps"]}

    def client(self) -> RegistryClient:
        return RegistryClient(
            self.registry_url, self.tokens["admin_token"], timeout=5.0, trust=self.trust
        )

    def logs(self, lines: int = 30) -> str:
        parts = []
        for name, started in sorted(self.procs.items()):
            text = started.log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(parts)

    # ---- start -------------------------------------------------------------------------

    def start(self, ready_s: float = 60.0) -> None:
        node = self.network.nodes[REGISTRY]
        # Ports from this worker's slice, below the kernel's ephemeral range: no outgoing
        # connection inside a host's namespace (an agent's watch, a health check) can hold
        # one as its local port when the server binds it.
        self.ports[REGISTRY] = free_port()
        self.ports["http"] = free_port()
        self.ports["https"] = free_port()
        reg_state = self.state / REGISTRY
        reg_state.mkdir(parents=True)
        done = subprocess.run(
            [str(BIN / "paas-registry"), "init", "--state-dir", str(reg_state), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=self._child_env(),
        )
        assert done.returncode == 0, done.stderr
        self.tokens = json.loads(done.stdout)
        self._spawn(
            REGISTRY,
            [
                str(BIN / "paas-registry"),
                "serve",
                "--state-dir",
                str(reg_state),
                "--host",
                node.address,
                "--port",
                str(self.ports[REGISTRY]),
                "--domain",
                self.domain,
                "--public-https-port",
                str(self.ports["https"]),
                *("--tls-cert", str(reg_state / "tls" / "registry.crt")),
                *("--tls-key", str(reg_state / "tls" / "registry.key")),
            ],
            PAAS_HEARTBEAT_TTL_S=str(TTL_S),
        )
        context = self.trust.ssl_context()
        self._wait(
            lambda: (
                httpx.get(f"{self.registry_url}/v1/health", timeout=1, verify=context).is_success
            ),
            ready_s,
        )
        for name in [FRONTEND, *self.machines]:
            self.start_agent(name)
        self._wait(self._all_up, ready_s)

    def start_agent(self, name: str) -> None:
        node = self.network.nodes[name]
        argv = [
            str(BIN / "paas-agent"),
            "--registry-url", self.registry_url,
            "--join-token", self.tokens["join_token"],
            "--name", name,
            "--address", node.address,
            "--state-dir", str(self.state / name),
        ]  # fmt: skip
        if name == FRONTEND:
            argv += ["--role", "frontend", "--http-port", str(self.ports["http"])]
            argv += ["--https-port", str(self.ports["https"])]
        else:
            self.ports.setdefault(name, free_port())
            number = self.machines.index(name)
            low = 21000 + number * 1000
            argv += ["--role", "machine", "--proxy-port", str(self.ports[name])]
            argv += ["--port-range", f"{low}-{low + 999}"]
            uids = self.app_uids.setdefault(name, uid_range())  # the same across restarts
            argv += ["--app-uids", f"{uids[0]}-{uids[1]}"]
            # Issue 8: the agent's API (logs, runs, /metrics), the same port across restarts.
            self.ports.setdefault(f"{name}-api", free_port())
            argv += ["--api-port", str(self.ports[f"{name}-api"])]
        self._spawn(
            name,
            argv,
            PAAS_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_S),
            PAAS_REGISTRY_FINGERPRINT=self.tokens["registry_fingerprint"],
        )

    def _child_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}

    def _spawn(self, name: str, argv: list[str], **env: str) -> None:
        node = self.network.nodes[name]
        log = self.state / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                node.wrap(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**self._child_env(), **env},
                cwd=self.state,
            )
        self.procs[name] = Started(node=node, popen=popen, log=log)

    def _all_up(self) -> bool:
        with self.client() as api:
            states = {h.name: h.state for h in api.list_hosts()}
        return all(states.get(n) == "up" for n in [FRONTEND, *self.machines])

    def _wait(self, check: object, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            for name, started in self.procs.items():
                if started.popen.poll() is not None:
                    raise AssertionError(f"{name} exited during start-up\n{self.logs()}")
            try:
                if check():  # type: ignore[operator]
                    return
            except Exception as exc:  # not ready yet; the last one is reported on timeout
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"cluster not ready in {limit_s:.0f}s ({last})\n{self.logs()}")

    # ---- faults ------------------------------------------------------------------------

    def kill_host(self, name: str) -> None:
        """SIGKILL every process of host `name`: agent, nginx, app instances."""
        started = self.procs.pop(name)
        host_pids = functools.partial(self._host_pids, name, started)
        _kill_whole(host_pids)
        _kill_groups(self.state / name)
        assert not host_pids(), f"{name} is meant to be dead, yet runs {host_pids()}"
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.popen.wait(timeout=10)

    def _host_pids(self, name: str, started: Started) -> list[int]:
        """The host's processes: its namespace's, or what descends from its first process."""
        pids = [started.popen.pid, *_descendants(started.popen.pid)]
        if self.network.kind == "netns":
            pids += [pid for pid in self.network.pids(name) if pid not in pids]
        return [pid for pid in pids if _alive(pid)]

    # ---- stop --------------------------------------------------------------------------

    def close(self) -> None:
        """Agents first (they stop their apps), then the registry; SIGKILL what remains."""
        order = [n for n in self.procs if n != REGISTRY] + [REGISTRY]
        for name in order:
            started = self.procs.get(name)
            if started is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                started.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name in order:
            started = self.procs.get(name)
            if started is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                started.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for name, started in list(self.procs.items()):
            _kill_whole(functools.partial(self._host_pids, name, started))
            with contextlib.suppress(subprocess.TimeoutExpired):
                started.popen.wait(timeout=5)
        for name in self.machines:
            _kill_groups(self.state / name)
        self.procs.clear()


def _kill_whole(list_pids: Callable[[], list[int]]) -> None:
    """Stop every process first, listing again until no new one appears, then kill them all.
    Killed one by one, an nginx master still alive respawns the worker just killed, and that
    worker keeps answering 502 for a host that is meant to be dead."""
    stopped: set[int] = set()
    for _ in range(50):
        new = [pid for pid in list_pids() if pid not in stopped]
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        stopped.update(new)
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running or stopped, not a zombie waiting for its parent."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _kill_groups(machine_state: Path) -> None:
    """App instances run in process groups of their own: end those still running from under
    this host's state folder (only when the agent could not stop them)."""
    apps = machine_state / "apps"
    if apps.is_dir():
        for pgid in stray_groups(apps, keep=set()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
