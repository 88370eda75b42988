"""Server-set changes through HAProxy's runtime API instead of a reload.

`runtime_commands` (pure) says whether a new view differs from the live one only in the
contents of server slots, and if so which `set server` commands make the live worker match.
`RuntimeApi` sends them on the worker's admin socket (`stats socket ... level admin`, always
the newest worker) and checks the result with `show servers state`. The caller still writes
the files (validated, swapped) so a later reload keeps the same servers.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from agent.errors import ProxyError
from agent.proxy.haproxy.slots import EMPTY_ADDRESS, EMPTY_PORT, empty_slot
from agent.proxy.haproxy.view import EXACT_MAP_FILE, HaproxyView

log = logging.getLogger(__name__)

CLI_TIMEOUT_S = 2.0
FORCED_MAINT = 0x01  # srv_admin_state bit set by `set server ... state maint`


def _skeleton(view: HaproxyView) -> HaproxyView:
    """The view with every slot emptied and no exact domains: equal skeletons render the same
    config apart from the server lines and hosts.map, so the runtime API can cover the change.
    (The wildcard map stays in: HAProxy matches it in file order, longest suffix first, and
    `add map` appends.)"""
    backends = tuple(
        replace(b, servers=tuple(empty_slot(n + 1) for n in range(len(b.servers))))
        for b in view.backends
    )
    return replace(view, index=0, backends=backends, exact_map=())


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def runtime_commands(live: HaproxyView, new: HaproxyView) -> list[str] | None:
    """The `set server` and hosts.map commands turning `live` into `new`, or None when a
    reload is needed (a new app, wildcard domain, certificate or option, more servers than
    slots, a DNS name)."""
    if _skeleton(live) != _skeleton(new):
        return None
    commands = _map_commands(dict(live.exact_map), dict(new.exact_map))
    for old_backend, backend in zip(live.backends, new.backends, strict=True):
        for old, server in zip(old_backend.servers, backend.servers, strict=True):
            if old == server:
                continue
            target = f"{backend.name}/{server.name}"
            if old.filled:
                commands.append(f"set server {target} state maint")
            if server.filled:
                if not _is_ip(server.address):
                    return None  # `set server ... addr` takes an IP; a name needs a reload
                commands.append(f"set server {target} addr {server.address} port {server.port}")
                commands.append(f"set server {target} state ready")
            else:
                commands.append(f"set server {target} addr {EMPTY_ADDRESS} port {EMPTY_PORT}")
    return commands


def _map_commands(live: dict[str, str], new: dict[str, str]) -> list[str]:
    """Domain -> backend entries of hosts.map (validated names: no spaces, no separators)."""
    commands = [f"del map {EXACT_MAP_FILE} {domain}" for domain in sorted(live.keys() - new)]
    for domain in sorted(new):
        if domain not in live:
            commands.append(f"add map {EXACT_MAP_FILE} {domain} {new[domain]}")
        elif live[domain] != new[domain]:
            commands.append(f"set map {EXACT_MAP_FILE} {domain} {new[domain]}")
    return commands


def admin_command(admin_socket: Path, command: str, *, timeout_s: float = CLI_TIMEOUT_S) -> str:
    """Send one command (with its `<<` payload, if any) on a fresh admin-socket connection and
    return the whole answer: HAProxy closes a non-interactive connection after answering.
    ProxyError when the socket does not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(admin_socket))
            # A payload ends with an empty line; the newline here ends the command.
            sock.sendall(command.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks: list[bytes] = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise ProxyError(f"HAProxy runtime API {admin_socket}: {exc}") from exc
    return b"".join(chunks).decode(errors="replace").strip()


@dataclass(frozen=True)
class SlotState:
    address: str
    port: int
    maint: bool


class RuntimeApi:
    """The admin socket of the running HAProxy worker; blocking calls (run them in a thread)."""

    def __init__(self, admin_socket: Path, *, timeout_s: float = CLI_TIMEOUT_S) -> None:
        self.admin_socket = admin_socket
        self.timeout_s = timeout_s

    def run(self, command: str) -> str:
        """One command, its whole answer; ProxyError when the socket does not answer."""
        if "\n" in command or ";" in command:
            raise ValueError(f"one command at a time: {command!r}")
        return admin_command(self.admin_socket, command, timeout_s=self.timeout_s)

    def map_entries(self, name: str) -> dict[str, str]:
        """{key: value} of a map as the worker has it (`show map <file>`)."""
        entries: dict[str, str] = {}
        for line in self.run(f"show map {name}").splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0].startswith("0x"):
                entries[fields[1]] = fields[2]
        return entries

    def slots(self, backend: str) -> dict[str, SlotState]:
        """{server name: what the worker has} from `show servers state <backend>`."""
        text = self.run(f"show servers state {backend}")
        found: dict[str, SlotState] = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 19 or line.startswith("#") or fields[1] != backend:
                continue
            try:
                found[fields[3]] = SlotState(
                    address=fields[4],
                    port=int(fields[18]),
                    maint=bool(int(fields[6]) & FORCED_MAINT),
                )
            except ValueError:
                continue
        return found

    def apply(self, commands: list[str], expected: HaproxyView) -> None:
        """Send `commands`, then check every touched backend's slots against `expected`;
        ProxyError when the worker refused a command or disagrees afterwards."""
        for command in commands:
            answer = self.run(command)
            if answer and not answer.startswith(("IP changed", "no need to change")):
                raise ProxyError(f"HAProxy refused {command!r}: {answer}")
        if any(c.split()[1] == "map" for c in commands):
            entries = self.map_entries(EXACT_MAP_FILE)
            if entries != dict(expected.exact_map):
                raise ProxyError(f"HAProxy's {EXACT_MAP_FILE} is {entries}, not as rendered")
        touched = {c.split()[2].split("/")[0] for c in commands if c.split()[1] == "server"}
        for backend in expected.backends:
            if backend.name not in touched:
                continue
            live = self.slots(backend.name)
            for server in backend.servers:
                state = live.get(server.name)
                if state is None:
                    raise ProxyError(f"HAProxy has no server {backend.name}/{server.name}")
                if server.filled and (
                    state.maint or (state.address, state.port) != (server.address, server.port)
                ):
                    raise ProxyError(
                        f"HAProxy's {backend.name}/{server.name} is {state}, expected"
                        f" {server.address}:{server.port} ready"
                    )
                if not server.filled and not state.maint:
                    raise ProxyError(f"HAProxy's {backend.name}/{server.name} is not in maint")
