"""Service ports nobody else holds: check a port is free before nginx listens on it.

Apps run on the same host as the machine nginx, so an app can bind a service port
(127.0.0.1:20000-29999) before nginx does; a config listening there would then fail to
reload for every app on the host. Before a config adds such a listener, the machine proxy
asks here whether the port is free; a taken one is left out of the config (the other apps'
routing still applies) and reported with the process holding it, and checked again on each
pass, so the listener comes back once the squatter is gone.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import psutil

SERVICE_ADDRESS = "127.0.0.1"
# A listener on any of these holds 127.0.0.1:<port> too.
_COVERING = {SERVICE_ADDRESS, "0.0.0.0", "::", "::ffff:127.0.0.1"}


@dataclass(frozen=True)
class PortHolder:
    """Who holds a port: a process (pid, uid, name), or unknown (pid None)."""

    port: int
    pid: int | None = None
    uid: int | None = None
    name: str = ""

    def describe(self) -> str:
        if self.pid is None:
            return "an unknown process"
        return f"pid {self.pid} (uid {self.uid}, {self.name or '?'})"


def is_free(port: int, *, address: str = SERVICE_ADDRESS) -> bool:
    """Can a listener bind address:port now? Bound with SO_REUSEADDR like nginx's own
    listeners, so only a live socket (not TIME_WAIT) counts as taken."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def holders(ports: Collection[int]) -> dict[int, list[PortHolder]]:
    """{port: the processes listening on it} for `ports` (root sees every process)."""
    found: dict[int, list[PortHolder]] = {port: [] for port in ports}
    if not ports:
        return found
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return found
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr:
            continue
        if conn.laddr.port not in found or conn.laddr.ip not in _COVERING:
            continue
        found[conn.laddr.port].append(_holder(conn.laddr.port, conn.pid))
    return found


def _holder(port: int, pid: int | None) -> PortHolder:
    if pid is None:
        return PortHolder(port=port)
    try:
        proc = psutil.Process(pid)
        return PortHolder(port=port, pid=pid, uid=proc.uids().real, name=proc.name())
    except psutil.Error:
        return PortHolder(port=port, pid=pid)


def squatters(
    ports: Iterable[int], *, ours: Collection[int], known: Collection[int] = ()
) -> dict[int, PortHolder]:
    """{port: holder} of the `ports` another process holds. `ours` are the pids of the nginx
    (its listeners are fine); `known` are ports already reported as taken, whose holder is not
    looked up again while the port stays taken (psutil reads every process's sockets)."""
    taken = [port for port in ports if not is_free(port)]
    lookup = [port for port in taken if port not in known]
    found = holders(lookup)
    result: dict[int, PortHolder] = {}
    for port in taken:
        if port not in found:  # still taken, reported before
            result[port] = PortHolder(port=port)
            continue
        listeners = found[port]
        if listeners and all(holder.pid in ours for holder in listeners):
            continue  # nginx itself
        others = [holder for holder in listeners if holder.pid not in ours]
        result[port] = others[0] if others else PortHolder(port=port)
    return result
