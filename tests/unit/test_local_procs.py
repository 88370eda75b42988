"""How `paas local` tells its processes apart (cli/local_procs.py, cli/local.py): by folder,
by role from the command line, and by start ticks that no clock step moves."""

from __future__ import annotations

import os

import psutil
import pytest

from cli.local import ClusterError, _alive, free_range, free_uid_block
from cli.local_procs import _option, _role, is_under, start_ticks, uid_ranges_of


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


def test_app_uids_of_running_machine_agents() -> None:
    """An agent started without --app-uids hands out its default block; frontends none."""
    py, agent = "/v/bin/python", "/v/bin/paas-agent"
    lines = [
        [py, agent, "--role", "machine", "--app-uids", "80000-80999"],
        [py, agent, "--role", "machine", "--name", "old"],
        [py, agent, "--role", "frontend", "--name", "frontend-1"],
        [py, "/v/bin/paas-registry", "serve"],
        ["nginx: master process"],
    ]
    assert uid_ranges_of(lines) == [(80000, 80999), (70000, 79999)]


def test_a_new_cluster_takes_app_uids_no_running_agent_hands_out() -> None:
    """Two clusters sharing a uid: one's app could read the other's files, and one's janitor
    kill the other's app when an app departs."""
    blocks = {(low, low + 999) for low in range(80000, 100000, 1000)}
    assert {free_uid_block([]) for _ in range(200)} <= blocks  # never the agents' default
    claimed = [(70000, 79999), (80000, 80999), (81500, 81500), (83000, 99999)]
    assert {free_uid_block(claimed) for _ in range(20)} == {(82000, 82999)}  # the one left
    with pytest.raises(ClusterError, match="pass --app-uids"):
        free_uid_block([(60000, 99999)])
