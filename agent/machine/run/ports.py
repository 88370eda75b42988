"""Ports for app instances: free ones from the configured range, never one a live instance holds."""

from __future__ import annotations

import errno
import random
import socket

from agent.errors import AgentError


class NoFreePort(AgentError):
    """Every port of the range is taken (by our instances or by someone else)."""


class PortAllocator:
    """Hands out ports from [low, high]; a port stays reserved until `release`d."""

    def __init__(self, low: int, high: int, *, rng: random.Random | None = None) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"invalid port range {low}-{high}")
        self.low = low
        self.high = high
        self._reserved: set[int] = set()
        self._rng = rng or random.Random()

    @property
    def reserved(self) -> frozenset[int]:
        return frozenset(self._reserved)

    def acquire(self) -> int:
        """A port nobody listens on now (checked by binding 127.0.0.1), reserved for the caller.

        Starts at a random offset so restarted agents do not race for the same first port.
        """
        size = self.high - self.low + 1
        start = self._rng.randrange(size)
        for step in range(size):
            port = self.low + (start + step) % size
            if port in self._reserved or not port_is_free(port):
                continue
            self._reserved.add(port)
            return port
        raise NoFreePort(f"no free port left in {self.low}-{self.high}")

    def reserve(self, port: int) -> None:
        """Hold a port a live instance already listens on (one adopted after a restart)."""
        self._reserved.add(port)

    def release(self, port: int | None) -> None:
        if port is not None:
            self._reserved.discard(port)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True
