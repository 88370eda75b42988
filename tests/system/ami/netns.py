"""A network namespace joined to the host by a veth pair, on a free /30 of 198.18.0.0/15.

The host side gets the first address (the test's registry listens there), the namespace the
second (the "booted" host). Everything is removed in finally, also when the test fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from tests.system.netlock import claiming_a_subnet

BENCH_NET = ipaddress.ip_network("198.18.0.0/15")


@dataclass(frozen=True)
class Link:
    netns: str
    host_if: str
    host_addr: str  # the host side (198.18.x.y+1)
    ns_addr: str  # inside the namespace (198.18.x.y+2)

    def exec_argv(self) -> list[str]:
        """Enter only the network namespace. (`ip netns exec` would also give every command a
        mount namespace of its own: a restarted agent could then not see where the processes
        of the one before it run, which systemd, sharing one root, does not do.)"""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _ip("-o", "-4", "addr", "show").stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for _ in range(200):
        offset = random.randrange(0, BENCH_NET.num_addresses // 4) * 4
        subnet = ipaddress.ip_network(f"{BENCH_NET.network_address + offset}/30")
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise AssertionError("no free /30 in 198.18.0.0/15")


@contextlib.contextmanager
def veth_namespace(tag: str) -> Iterator[Link]:
    """`tag` keeps names unique per test run (interface names are at most 15 bytes)."""
    suffix = f"{tag}{os.getpid() % 100000}"
    netns, host_if, ns_if = f"paas-{suffix}", f"pa{suffix}h", f"pa{suffix}n"
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", netns)
        with claiming_a_subnet():  # free until its address is on our link
            subnet = _free_subnet()
            host_addr, ns_addr = (str(subnet.network_address + n) for n in (1, 2))
            _ip("addr", "add", f"{host_addr}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", netns, "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        _ip("-n", netns, "link", "set", ns_if, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        yield Link(netns=netns, host_if=host_if, host_addr=host_addr, ns_addr=ns_addr)
    finally:
        _ip("netns", "del", netns, check=False)  # takes its end of the pair with it
        _ip("link", "del", host_if, check=False)
