"""`paas local up|status|down` as a user runs them, on free ports and a tmp state dir:
a fresh cluster; two side by side; kill -9 of the machine agent, then `up` completes the
half-running cluster (the app keeps its pid and keeps answering) and `down` leaves nothing;
`down` with stale pid records (what a wall-clock step did to the old records)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cli.local import MACHINE, LocalCluster, _alive, port_free
from cli.local_procs import processes_under, wait_gone
from tests.conftest import _kill_recorded, free_ports, short_dir
from tests.e2e.helpers import PAAS, REPO, answer_now, https_get, logs
from tests.e2e.request_loop import RequestLoop

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-local")]  # local_a: one per module


def run(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`paas ARGS`; `config`: where it saves its login (else the test's PAAS_CONFIG)."""
    env = {**os.environ, "PAAS_CONFIG": str(config)} if config else None
    return subprocess.run([PAAS, *args], capture_output=True, text=True, timeout=200, env=env)


def test_port_in_use_is_named(tmp_path: Path) -> None:
    import socket

    registry, http, https, proxy, agent_api = free_ports(5)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", https))
        busy.listen()
        done = run(
            "local", "up", "--state-dir", str(tmp_path / "s"),
            "--registry-port", str(registry), "--http-port", str(http),
            "--https-port", str(https), "--proxy-port", str(proxy),
            "--agent-api-port", str(agent_api), "--no-deploy",
        )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip() == f"error: port {https} (https) on 127.0.0.1 is already in use"


HELLO = str(REPO / "examples" / "hello")
GREETING = "Hello from hello"


def port_args(state: Path, ports: list[int]) -> list[str]:
    registry, http, https, proxy, agent_api = ports
    return [
        "--state-dir", str(state),
        "--registry-port", str(registry), "--http-port", str(http),
        "--https-port", str(https), "--proxy-port", str(proxy),
        "--agent-api-port", str(agent_api),
    ]  # fmt: skip


def start(state: Path) -> LocalCluster:
    """`paas local up` on five free ports (app and service port ranges left to it), hello
    deployed; what it printed (up.out) and saved (config.json) stay beside the state folder
    for the test of `up` itself."""
    args = port_args(state, free_ports(5))
    done = run("local", "up", *args, "--app-dir", HELLO, config=state.parent / "config.json")
    cluster = LocalCluster(state)
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    (state.parent / "up.out").write_text(done.stdout)
    answer_now(cluster, "hello.localhost", GREETING)
    return cluster


def stop(state: Path) -> None:
    run("local", "down", "--state-dir", str(state))
    _kill_recorded(LocalCluster(state))


def app_instance(cluster: LocalCluster) -> tuple[int, int]:
    """(pid, port) of hello's one instance, from the machine agent's run records."""
    for path in (cluster.state_dir / MACHINE / "run").glob("*.json"):
        record = json.loads(path.read_text())
        if record["instance"]["app"] == "hello":
            return record["pid"], record["port"]
    raise AssertionError("no run record for hello\n" + logs(cluster))


def status(state: Path) -> dict:
    done = run("local", "status", "--state-dir", str(state), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def nothing_left(cluster: LocalCluster, ports: list[int]) -> None:
    """No process of the cluster (a `paas` command included) and every port free."""
    left = wait_gone(processes_under([cluster.state_dir]), 5.0)
    assert not left, [f"{m.pid} {m.command()} cwd={m.cwd}" for m in left]
    busy = [port for port in ports if not port_free(port)]
    assert not busy, f"ports still in use: {busy}"


def cluster_ports(cluster: LocalCluster) -> list[int]:
    p = cluster.ports
    return [p.registry, p.http, p.https, p.proxy, p.agent_api]


@pytest.fixture(scope="module")
def local_a() -> Iterator[LocalCluster]:
    """A cluster started with `paas local up`; the last test of the module brings it down."""
    with short_dir("paas-la-") as base:
        try:
            yield start(base / "s")
        finally:
            stop(base / "s")


def test_local_up_deploys_says_already_running_and_shows_status(local_a: LocalCluster) -> None:
    """What `up` printed and saved, a second `up`, and `status`; `down` is the last test's."""
    state, ports = local_a.state_dir, local_a.ports
    printed = (state.parent / "up.out").read_text()
    assert printed.strip().splitlines()[-1] == f"https://hello.localhost:{ports.https}/"
    saved_to = state.parent / "config.json"
    assert json.loads(saved_to.read_text())["registry_url"] == f"http://127.0.0.1:{ports.registry}"
    assert saved_to.stat().st_mode & 0o777 == 0o600

    again = run("local", "up", *port_args(state, cluster_ports(local_a)), "--no-deploy")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout

    seen = status(state)
    assert all(p["alive"] for p in seen["processes"].values())
    assert {h["state"] for h in seen["hosts"]} == {"up"}


def test_two_clusters_side_by_side(local_a: LocalCluster) -> None:
    """A second cluster on other ports, app and service ranges picked free and apart from
    the first: both serve `hello`; then its `down` (with pid records gone stale, as the old
    wall-clock records were after a clock step) stops all of it and nothing of the first."""
    with short_dir("paas-lb-") as base:
        try:
            b = start(base / "s")
            assert set(cluster_ports(b)).isdisjoint(cluster_ports(local_a))
            ranges = [c.app_ports for c in (local_a, b)] + [c.service_ports for c in (local_a, b)]
            assert all(r is not None for r in ranges)
            for i, (low, high) in enumerate(ranges):  # four ranges, no two overlap
                assert all(high < lo or low > hi for lo, hi in ranges[i + 1 :]), ranges
            assert app_instance(b)[1] != app_instance(local_a)[1]
            # App uids: a block each, apart, so neither cluster's app can read the other's
            # files or be killed by the other's janitor.
            assert local_a.app_uids is not None and b.app_uids is not None
            (a_low, a_high), (b_low, b_high) = local_a.app_uids, b.app_uids
            assert b_high < a_low or b_low > a_high, (local_a.app_uids, b.app_uids)
            if os.geteuid() == 0:  # apps run as their own uids only under a root agent
                for cluster, (low, high) in ((local_a, local_a.app_uids), (b, b.app_uids)):
                    uid = psutil.Process(app_instance(cluster)[0]).uids().real
                    assert low <= uid <= high, (uid, low, high)
            for cluster in (local_a, b):
                assert https_get(cluster, "hello.localhost").status_code == 200

            # Records that no longer match (no start ticks, create_time 1 s off): the old
            # down() and the fixture's teardown took every process for gone.
            record = json.loads((b.state_dir / "pids.json").read_text())
            for p in record["processes"].values():
                p.pop("start_ticks", None)
                p["create_time"] = psutil.Process(p["pid"]).create_time() + 1.0
            (b.state_dir / "pids.json").write_text(json.dumps(record))
            ports_b = [*cluster_ports(b), app_instance(b)[1]]
            down = run("local", "down", "--state-dir", str(b.state_dir))
            assert down.returncode == 0, down.stderr
            for name in ("frontend-1", "machine-1", "registry"):
                assert f"{name} (pid " in down.stdout, down.stdout
            nothing_left(b, ports_b)
            answer_now(local_a, "hello.localhost", GREETING)
        finally:
            stop(base / "s")


def test_kill_9_machine_agent_then_up_completes_and_down_leaves_nothing(
    local_a: LocalCluster,
) -> None:
    """Acceptance 3 of issue 16, on free ports: kill -9 of the machine agent leaves nginx and
    the app running (orphans in `status`); `paas local up --no-deploy` starts only the
    machine agent, which adopts them (same app pid, zero failed requests); after a second
    kill -9, `paas local down` stops the orphans too: no process left, every port free."""
    state = local_a.state_dir
    app_pid, app_port = app_instance(local_a)
    ports = [*cluster_ports(local_a), app_port]
    with RequestLoop(local_a, "hello.localhost", expect=GREETING) as loop:
        agent = status(state)["processes"][MACHINE]["pid"]
        os.kill(agent, signal.SIGKILL)
        assert not wait_gone([m for m in processes_under([state]) if m.pid == agent], 10.0), (
            "the machine agent did not die"
        )
        seen = status(state)
        assert not seen["processes"][MACHINE]["alive"]
        orphans = {o["role"] for o in seen["others"] if o["orphan"]}
        assert {"nginx", "app"} <= orphans, seen["others"]
        assert not port_free(local_a.ports.proxy)  # the orphaned nginx holds it

        began = time.monotonic()
        up = run("local", "up", "--state-dir", str(state), "--no-deploy")
        took = time.monotonic() - began
        assert up.returncode == 0, up.stdout + up.stderr + logs(local_a)
        assert "started machine-1 " in up.stdout, up.stdout
        assert f"port {local_a.ports.proxy} (proxy) is held by this cluster's nginx" in up.stdout
        after = status(state)
        assert all(p["alive"] for p in after["processes"].values()), after
        assert not any(o["orphan"] for o in after["others"]), after["others"]
        assert app_instance(local_a) == (app_pid, app_port)
        assert _alive(app_pid)
    assert loop.sent > 20 and not loop.failures, loop.summary()
    print(f"up on a half-running cluster took {took:.1f}s; {loop.summary()}")
    machine_log = local_a.log_path(MACHINE).read_text()
    assert "adopted the running nginx master" in machine_log
    assert "adopted running pid" in machine_log
    answer_now(local_a, "hello.localhost", GREETING)

    # The issue's other half: an agent killed, then `down` (it used to say "nothing was
    # running" and leave nginx and the app on their ports).
    os.kill(status(state)["processes"][MACHINE]["pid"], signal.SIGKILL)
    down = run("local", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert "nginx (pid" in down.stdout and f"app (pid {app_pid})" in down.stdout, down.stdout
    nothing_left(local_a, ports)
    assert not (state / "pids.json").exists()
    assert run("local", "down", "--state-dir", str(state)).stdout.strip() == ("nothing was running")
