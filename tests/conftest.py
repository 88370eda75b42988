"""Shared fixtures: free ports, and a real local cluster (registry + two agents) on loopback."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.local import LocalCluster, Ports, kill_tree, port_free
from tests.support import xdist_groups
from tests.support.clock import fake_clock  # noqa: F401  (a fixture)
from tests.support.leaks import (  # noqa: F401 (the leak check: hooks and fixture)
    _watch_basetemp,
    pytest_sessionfinish,
    pytest_testnodedown,
    track,
)
from tests.support.pg import SKIP_REASON as PG_SKIP_REASON
from tests.support.pg import PgServer, pg_bin, running_postgres
from tests.support.ports import free_port, free_ports

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e", "system")  # a folder of tests/ each, a marker each
# Integration tests that measure time limits and connection caps of a real registry (an
# answer within 1 s while under attack): marked `timed`. `make test` runs them once the
# parallel run is done, away from its load, in six xdist groups of 12-19 s: the attacks
# that keep a core busy in two ("bombs", "edge"), the tests that mostly wait in four (a
# registry stopped past the TTL; the connection cap held full; eviction at the pending cap;
# eviction that grants no grace, and shutdowns). "file" or "file::test" -> group.
_EDGE = "test_edge_attacks.py::test_"
_STALL = "test_registry_stall.py::test_"
TIMED = {
    "test_api_artifacts.py": "timed-bombs",
    "test_edge_attacks.py": "timed-edge",
    f"{_EDGE}one_tokens_flood_gets_429_and_slows_no_other_token": "timed-bombs",
    f"{_EDGE}one_tokens_concurrent_uploads_are_capped_with_429": "timed-bombs",
    f"{_EDGE}slow_sockets_over_the_pending_cap_evict_the_oldest_not_the_newcomer": "timed-evict",
    "test_registry_shutdown.py": "timed-grace",
    "test_registry_stall.py": "timed-waits",
    f"{_STALL}hosts_shut_out_by_a_full_connection_cap_are_not_marked_down": "timed-flood",
    f"{_STALL}slow_sockets_evicted_at_the_pending_cap_grant_no_grace": "timed-grace",
}
TIMED_FILES = {key.partition("::")[0] for key in TIMED}

# Where a tier's tests start under xdist: the longest first (the host image tests take about
# a minute each on one worker), the many short unit tests last, where they even out the
# workers' finishing times. Needs --no-loadscope-reorder (the Makefile passes it).
START_ORDER = {"system": 1, "e2e": 2, "integration": 3, "unit": 4}


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(xdist_groups):
        config.pluginmanager.register(xdist_groups, "paas-xdist-groups")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`-m timed` (make test's second run) imports only the files that hold timed tests:
    each of its six workers would otherwise import every test module for nothing."""
    if config.option.markexpr != "timed" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    return collection_path.name not in TIMED_FILES or None


@pytest.hookimpl(tryfirst=True)  # before the groups are read (tests/support/xdist_groups.py)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier, from the folder it lives in (`-m unit`, `-m 'not system'`),
    and put the tiers in START_ORDER, the `slow` tests first of all."""
    order: dict[str, int] = {}
    for item in items:
        try:
            tier = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        group = TIMED.get(f"{item.path.name}::{item.name}", TIMED.get(item.path.name))
        if tier == "integration" and group is not None:
            item.add_marker(pytest.mark.timed)
            item.add_marker(pytest.mark.xdist_group(group))
        slow = item.get_closest_marker("slow") is not None
        order[item.nodeid] = 0 if slow else START_ORDER.get(tier, len(START_ORDER) + 1)
    items.sort(key=lambda item: order.get(item.nodeid, len(START_ORDER) + 1))


@pytest.fixture(name="free_port")
def free_port_fixture() -> int:
    return free_port()


@pytest.fixture(scope="session", autouse=True)
def _session_cli_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for module- and session-scoped fixtures, which are set up before any test's
    own: a module's `paas local up` saved its login to root's ~/.config/paas."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAAS_CONFIG", str(tmp_path_factory.mktemp("cli") / "paas-config.json"))
        patch.delenv("PAAS_REGISTRY_URL", raising=False)
        patch.delenv("PAAS_TOKEN", raising=False)
        yield


@pytest.fixture(autouse=True)
def _isolated_cli_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may read or write ~/.config/paas or inherit a login from the environment."""
    monkeypatch.setenv("PAAS_CONFIG", str(tmp_path / "paas-config.json"))
    monkeypatch.delenv("PAAS_REGISTRY_URL", raising=False)
    monkeypatch.delenv("PAAS_TOKEN", raising=False)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A throwaway PostgreSQL for the session (tests/support/pg.py); skips only without its
    binaries."""
    if pg_bin() is None:
        pytest.skip(PG_SKIP_REASON)
    with running_postgres() as server:
        yield server


@pytest.fixture(autouse=True)
def _test_database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`PAAS_TEST_DATABASE=postgres`: every registry a test builds from the environment uses a
    fresh PostgreSQL database of its own (issue 8), migrated at start."""
    if os.environ.get("PAAS_TEST_DATABASE", "sqlite") != "postgres":
        return
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("checks the embedded SQLite registry (its files), not a database setting")
    server = request.getfixturevalue("postgres")
    monkeypatch.setenv("PAAS_DATABASE_URL", server.new_database())
    monkeypatch.setenv("PAAS_MIGRATE_ON_START", "true")


def _kill_recorded(cluster: LocalCluster) -> None:
    """Last resort when down() failed: SIGKILL every process of the cluster (found from its
    state folder, not from possibly stale pids), and only those."""
    for member in cluster.members():
        kill_tree(member.pid)


@contextlib.contextmanager
def short_dir(prefix: str = "paas-") -> Iterator[Path]:
    """A tmp folder with a short path: HAProxy refuses unix sockets longer than 97 bytes,
    and pytest's tmp_path (/tmp/pytest-of-root/pytest-N/test_long_name0/...) gets close."""
    path = track(Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")))  # leaks.py checks it
    try:
        yield path
    finally:
        _end_proxies_under(path)
        shutil.rmtree(path, ignore_errors=True)


def _end_proxies_under(folder: Path) -> None:
    """An nginx or HAProxy master whose config lives in this test's own folder was started by
    this test (through its agent); if the agent did not stop it (a failed or cancelled
    test), it must not outlive the test holding ports."""
    import psutil

    marker = f"{folder}/"
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.info.get("name") in ("nginx", "haproxy") and marker in cmdline:
            kill_tree(proc.info["pid"])


def free_port_range(size: int = 64, *, low: int = 20000, high: int = 32000) -> tuple[int, int]:
    """A block of `size` ports that are free now, at a random place in [low, high): the
    registry's per-app service ports (issue 5), distinct for clusters that run side by side."""
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(low, high - size)
        if all(port_free(port) for port in range(start, start + size)):
            return start, start + size - 1
    raise RuntimeError(f"no {size} free consecutive ports in {low}-{high}")


@contextlib.contextmanager
def running_cluster(state_dir: Path) -> Iterator[LocalCluster]:
    registry, http, https, proxy, agent_api = free_ports(5)
    cluster = LocalCluster(
        state_dir,
        ports=Ports(registry=registry, http=http, https=https, proxy=proxy, agent_api=agent_api),
        service_ports=free_port_range(),
    )
    try:
        cluster.up()
        yield cluster
    finally:
        try:
            cluster.down(timeout=20)
        finally:
            _kill_recorded(cluster)
