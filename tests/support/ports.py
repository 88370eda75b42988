"""Free TCP ports on 127.0.0.1 for tests that run side by side (pytest-xdist workers).

Binding port 0 hands out a port from the kernel's ephemeral range, where every outgoing
connection of every test also takes its local port, so a port freed for a server could be
taken before the server binds it. These ports come from below that range instead
(10000-19999; service port blocks use 20000-31999), and each xdist worker draws from its own
slice of it, so two workers never pick the same port. Within a worker, a port handed out
is not handed out again for the next RECENT picks: a caller that asks for ports one at a time
and binds them later (a cluster's registry, HTTP and HTTPS ports) would otherwise get the
same port twice about once in 2,500 pairs, and HAProxy then serves HTTP and HTTPS on one port.
"""

from __future__ import annotations

import collections
import os
import random
import socket

LOW, HIGH = 10000, 20000
RECENT = 200
_recent: collections.deque[int] = collections.deque(maxlen=RECENT)


def worker_slice(low: int = LOW, high: int = HIGH) -> tuple[int, int]:
    """[start, end) of this xdist worker's share of [low, high); all of it without xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or "1")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    width = (high - low) // max(count, 1)
    start = low + (index % max(count, 1)) * width
    return start, start + width


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports nobody listens on now at `host`, from this worker's slice."""
    low, high = worker_slice()
    rng = random.Random()
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(5000):
            if len(ports) == count:
                _recent.extend(ports)
                return ports
            port = rng.randrange(low, high)
            if port in ports or port in _recent:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            socks.append(sock)
            ports.append(port)
        raise RuntimeError(f"no {count} free ports in {low}-{high - 1}")
    finally:
        for sock in socks:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now at `host`, from this worker's slice."""
    return free_ports(1, host)[0]
