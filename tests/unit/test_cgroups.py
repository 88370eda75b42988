"""agent/machine/run/cgroups.py against fake cgroup trees (plain folders): where the apps'
cgroups go in
v1 and v2, the v2 no-internal-processes move, and the limits written. The real hierarchy is
exercised in tests/integration/test_app_limits.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.machine.run.cgroups import CgroupError, Cgroups, Limits, format_mb


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v1_cgroups_go_below_the_agents_own_cgroup_in_each_hierarchy(tmp_path: Path) -> None:
    proc = tmp_path / "self-cgroup"
    proc.write_text("9:name=systemd:/\n8:pids:/\n4:memory:/sandbox/abc\n1:cpu,cpuacct:/\n0::/\n")
    for controller in ("memory", "pids", "cpu"):
        _touch(tmp_path / controller / "cgroup.procs")
    (tmp_path / "memory/sandbox/abc").mkdir(parents=True)
    cgroups = Cgroups.detect("paas-x", root=tmp_path, proc_self=proc)
    assert cgroups is not None and cgroups.version == 1
    assert cgroups.bases == {
        "memory": tmp_path / "memory/sandbox/abc/paas-x",
        "pids": tmp_path / "pids/paas-x",
        "cpu": tmp_path / "cpu/paas-x",
    }
    # The files a real cgroupfs has, so prepare() can write them.
    leaf = tmp_path / "memory/sandbox/abc/paas-x/shop/i7"
    for path in (
        tmp_path / "pids/paas-x/shop/pids.max",
        tmp_path / "cpu/paas-x/shop/cpu.shares",
        leaf / "memory.limit_in_bytes",
        leaf / "memory.memsw.limit_in_bytes",
    ):
        _touch(path)
    files = cgroups.prepare("shop", "i7", Limits(memory_mb=64, pids_max=100, cpu_weight=50))
    assert files[0] == leaf / "cgroup.procs"
    assert (leaf / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (leaf / "memory.memsw.limit_in_bytes").read_text() == str(64 << 20)  # no swap
    assert (tmp_path / "pids/paas-x/shop/pids.max").read_text() == "100"
    assert (tmp_path / "cpu/paas-x/shop/cpu.shares").read_text() == "512"


def test_v2_apps_go_to_the_top_of_the_hierarchy_outside_the_agents_unit(tmp_path: Path) -> None:
    """A unit cgroup that enables controllers may hold no process, so systemd could not put
    a restarted agent back into it: the apps live at the top, as Nomad's nomad.slice does."""
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/system.slice/paas-agent.service\n")
    _touch(tmp_path / "cgroup.controllers", "cpuset cpu io memory pids\n")
    _touch(tmp_path / "cgroup.subtree_control", "cpu memory\n")
    unit = tmp_path / "system.slice/paas-agent.service"
    _touch(unit / "cgroup.procs", "100\n")
    _touch(unit / "cgroup.subtree_control")
    _touch(tmp_path / "paas-x/cgroup.subtree_control")
    cgroups = Cgroups.detect("paas-x", root=tmp_path, proc_self=proc)
    assert cgroups is not None and cgroups.version == 2
    assert cgroups.bases == {"unified": tmp_path / "paas-x"}
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+pids"  # only what was missing
    assert (tmp_path / "paas-x/cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (unit / "cgroup.subtree_control").read_text() == ""  # the unit is left alone
    assert not (unit / "agent").exists()


def test_v2_falls_back_to_the_agents_delegated_cgroup(tmp_path: Path) -> None:
    """The top of the hierarchy lacks the controllers (or is read-only): the agent's own
    delegated cgroup, with itself moved into a leaf first."""
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/system.slice/paas-agent.service\n")
    _touch(tmp_path / "cgroup.controllers", "cpuset cpu io pids\n")
    unit = tmp_path / "system.slice/paas-agent.service"
    _touch(unit / "cgroup.controllers", "cpu memory pids\n")
    _touch(unit / "cgroup.procs", "100\n200\n")
    _touch(unit / "cgroup.subtree_control")
    _touch(unit / "agent/cgroup.procs")
    _touch(unit / "paas-x/cgroup.subtree_control")
    cgroups = Cgroups.detect("paas-x", root=tmp_path, proc_self=proc)
    assert cgroups is not None and cgroups.version == 2
    assert cgroups.bases == {"unified": unit / "paas-x"}
    assert (unit / "agent/cgroup.procs").read_text() == "200"  # each pid written (last here)
    assert (unit / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    # A restarted agent finds itself in agent/: the same base.
    proc.write_text("0::/system.slice/paas-agent.service/agent\n")
    assert Cgroups.detect("paas-x", root=tmp_path, proc_self=proc).bases == cgroups.bases  # type: ignore[union-attr]


def test_no_cgroups_means_none_and_bad_names_are_refused(tmp_path: Path) -> None:
    assert Cgroups.detect("paas-x", root=tmp_path, proc_self=tmp_path / "missing") is None
    proc = tmp_path / "self-cgroup"
    proc.write_text("4:memory:/\n")
    assert Cgroups.detect("paas-x", root=tmp_path, proc_self=proc) is None  # no hierarchy
    with pytest.raises(CgroupError):
        Cgroups.detect("../escape", root=tmp_path, proc_self=proc)
    with pytest.raises(CgroupError):
        Cgroups(1, {"pids": tmp_path})  # never a folder not of our own


def test_format_mb() -> None:
    assert (format_mb(64), format_mb(1536), format_mb(2048)) == ("64M", "1536M", "2G")
