"""tests/support/ports.py: ports asked for one at a time are distinct (a cluster's HTTP and
HTTPS ports once came out the same, and HAProxy served both on one port)."""

from __future__ import annotations

from tests.support.ports import RECENT, free_port, free_ports, worker_slice


def test_ports_asked_for_one_at_a_time_do_not_repeat() -> None:
    picked = [free_port() for _ in range(RECENT)]
    assert len(set(picked)) == len(picked)
    low, high = worker_slice()
    assert all(low <= port < high for port in picked)
    assert not set(free_ports(5)) & set(picked[-RECENT + 5 :])
