"""How `paas local` tells its processes apart (cli/local_procs.py, cli/local.py): by folder,
by role from the command line, and by start ticks that no clock step moves."""

from __future__ import annotations

import os

import psutil
import pytest

from cli.local import ClusterError, _alive, free_range
from cli.local_procs import _option, _role, is_under, start_ticks


def test_under_a_folder_also_once_it_was_deleted() -> None:
    assert is_under("/tmp/p/s", "/tmp/p/s")
    assert is_under("/tmp/p/s/machine-1/apps/x", "/tmp/p/s")
    assert is_under("/tmp/p/s/machine-1 (deleted)", "/tmp/p/s")
    assert not is_under("/tmp/p/s2", "/tmp/p/s")
    assert not is_under("/tmp/p", "/tmp/p/s")


def test_roles_from_command_lines() -> None:
    py = "/repo/.venv/bin/python"
    assert _role("python", (py, "/repo/.venv/bin/paas-registry", "serve")) == "registry"
    agent = (py, "/v/bin/paas-agent", "--role", "machine", "--name", "machine-1")
    assert _role("paas-agent", agent) == "machine-1"
    assert _role("nginx", ("nginx: worker process",)) == "nginx"
    assert _role("haproxy", ("/usr/sbin/haproxy", "-W", "-f", "/s/h.cfg")) == "haproxy"
    assert _role("python3", ("python3", "app.py")) == "app"


def test_identity_survives_a_wall_clock_step() -> None:
    """psutil's create_time is boot time + ticks, and boot time follows the wall clock: after
    a step of 1 s (or a slow drift across a whole second) a recorded create_time no longer
    matches, and the old check called a live agent dead. Ticks since boot do not move."""
    me = os.getpid()
    ticks = start_ticks(me)
    assert ticks is not None and ticks > 0
    stepped = psutil.Process(me).create_time() + 1.0
    assert not _alive(me, stepped)  # what a record without ticks got after the step
    assert _alive(me, stepped, ticks)
    assert not _alive(me, None, ticks + 1)  # a reused pid started at another moment


def test_free_ranges_do_not_overlap() -> None:
    first = free_range(50)
    second = free_range(50, avoid=(first,))
    assert second[1] < first[0] or second[0] > first[1]
    assert first[1] - first[0] == 49


def test_a_free_range_is_found_however_crowded_the_rest_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only two 8-port blocks fit between a busy port and a claimed range: every search finds
    one of them (random tries used to give up when most places were taken)."""
    base = 20000
    busy = {base + 7}
    monkeypatch.setattr("cli.local.port_free", lambda port, host="127.0.0.1": port not in busy)
    claimed = ((base + 16, base + 21),)
    for _ in range(20):
        found = free_range(8, low=base, high=base + 30, avoid=claimed)
        assert found in {(base + 8, base + 15), (base + 22, base + 29)}
    with pytest.raises(ClusterError, match="no 9 free consecutive ports"):
        free_range(9, low=base, high=base + 30, avoid=claimed)
    # One free 500-port block in 10000-32000: found at once, wherever the search starts.
    busy = set(range(10000, 32000)) - set(range(27100, 27600))
    assert free_range(500, low=10000, high=32000) == (27100, 27599)


def test_options_read_from_command_lines() -> None:
    args = ["paas-agent", "--port-range", "20100-20199", "--name=x"]
    assert _option(args, "--port-range") == "20100-20199"
    assert _option(args, "--name") == "x"
    assert _option(args, "--api-port") is None
