"""The test network: one namespace per host on a bridge in 198.18.0.0/15, or loopback.

`bridged_network(names)` creates, for each name, a network namespace joined by a veth pair to
one bridge in the root namespace (which the test process itself uses, on the bridge's own
address). `loopback_network(names)` is the fallback where namespaces are not allowed: every
host gets its own 127.0.0.N address and nothing can be cut off. `cut`/`restore` take a
host's link down and up; `partition`/`heal` drop the traffic between two hosts only
(blackhole routes inside their namespaces, removed with them). Everything created is removed
in finally, also when the test fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tests.system.netlock import claiming_a_subnet

TEST_NET = ipaddress.ip_network("198.18.0.0/15")


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    netns: str | None = None  # None: loopback fallback, the root namespace
    link: str | None = None  # the root side of its veth pair (what a cut takes down)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """Run `argv` inside this host's network namespace (only the network one)."""
        if self.netns is None:
            return list(argv)
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]


@dataclass
class Network:
    kind: str  # "netns" | "loopback"
    gateway: str  # the test process's own address on the network
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def can_cut(self) -> bool:
        return self.kind == "netns"

    def cut(self, name: str) -> None:
        """Take one host off the network (its processes keep running)."""
        link = self.nodes[name].link
        if link is None:
            raise RuntimeError("the loopback fallback cannot cut a host off")
        ip("link", "set", link, "down")

    def restore(self, name: str) -> None:
        link = self.nodes[name].link
        if link is None:
            raise RuntimeError("the loopback fallback cannot cut a host off")
        ip("link", "set", link, "up")

    def partition(self, one: str, other: str) -> None:
        """Drop all traffic between two hosts, both ways (blackhole routes in each namespace);
        each keeps reaching every other host."""
        for here, there in ((one, other), (other, one)):
            ip("-n", self._netns(here), "route", "add", "blackhole", self._host_route(there))

    def heal(self, one: str, other: str) -> None:
        for here, there in ((one, other), (other, one)):
            ip("-n", self._netns(here), "route", "del", "blackhole", self._host_route(there))

    def _netns(self, name: str) -> str:
        netns = self.nodes[name].netns
        if netns is None:
            raise RuntimeError("the loopback fallback cannot partition hosts")
        return netns

    def _host_route(self, name: str) -> str:
        return f"{self.nodes[name].address}/32"

    def pids(self, name: str) -> list[int]:
        """Every process in the host's namespace (netns only)."""
        netns = self.nodes[name].netns
        if netns is None:
            return []
        out = ip("netns", "pids", netns, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def namespaces_allowed() -> bool:
    """Can this process create a network namespace (root, `ip`, kernel support)?"""
    probe = f"paas-probe{os.getpid() % 100000}"
    try:
        if ip("netns", "add", probe, check=False).returncode != 0:
            return False
    except (OSError, subprocess.TimeoutExpired):
        return False
    ip("netns", "del", probe, check=False)
    return True


def _free_subnet(prefix: int = 24) -> ipaddress.IPv4Network:
    used = []
    for line in ip("-o", "-4", "addr", "show").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    size = 2 ** (32 - prefix)
    for _ in range(200):
        offset = random.randrange(0, TEST_NET.num_addresses // size) * size
        subnet = ipaddress.ip_network(f"{TEST_NET.network_address + offset}/{prefix}")
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise RuntimeError("no free /24 in 198.18.0.0/15")


@contextlib.contextmanager
def bridged_network(names: Sequence[str]) -> Iterator[Network]:
    tag = f"{os.getpid() % 100000}"
    bridge = f"pb{tag}"
    created: list[tuple[str, str]] = []  # (netns, root-side link)
    try:
        ip("link", "add", bridge, "type", "bridge")
        with claiming_a_subnet():  # free until its address is on our bridge
            subnet = _free_subnet()
            hosts = list(subnet.hosts())
            ip("addr", "add", f"{hosts[0]}/{subnet.prefixlen}", "dev", bridge)
        network = Network(kind="netns", gateway=str(hosts[0]))
        ip("link", "set", bridge, "up")
        for number, name in enumerate(names, start=1):
            netns, outer, inner = f"pn{tag}-{number}", f"pv{tag}h{number}", f"pv{tag}n{number}"
            ip("netns", "add", netns)
            created.append((netns, outer))
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", netns)
            ip("link", "set", outer, "master", bridge)
            ip("link", "set", outer, "up")
            address = str(hosts[9 + number])
            ip("-n", netns, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", inner)
            ip("-n", netns, "link", "set", inner, "up")
            ip("-n", netns, "link", "set", "lo", "up")
            network.nodes[name] = Node(name=name, address=address, netns=netns, link=outer)
        yield network
    finally:
        for netns, outer in created:
            ip("netns", "del", netns, check=False)  # takes its end of the pair with it
            ip("link", "del", outer, check=False)
        ip("link", "del", bridge, check=False)


@contextlib.contextmanager
def loopback_network(names: Sequence[str]) -> Iterator[Network]:
    base = 10 + (os.getpid() % 200)
    network = Network(kind="loopback", gateway="127.0.0.1")
    for number, name in enumerate(names, start=1):
        network.nodes[name] = Node(name=name, address=f"127.0.{base}.{number + 1}")
    yield network


def test_network(names: Sequence[str], *, force_loopback: bool = False) -> Iterator[Network]:
    """Namespaces when allowed, else the loopback fallback (as a context manager)."""
    if not force_loopback and namespaces_allowed():
        return bridged_network(names)
    return loopback_network(names)


test_network.__test__ = False  # type: ignore[attr-defined]
