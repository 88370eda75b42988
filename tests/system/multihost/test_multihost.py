"""Several real hosts on one machine: placement spread, scaling, host loss and a host cut off.

Each host is a network namespace on a bridge in 198.18.0.0/15 (registry, frontend and three
machines, each with its own agent; machines with their own nginx), or 127.0.N.x addresses
where namespaces are not allowed (the cut-off test is skipped there). The tests share one
cluster and run in order; the host kill comes last.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from common.wire import InstanceView
from tests.conftest import short_dir
from tests.e2e.request_loop import sent_more
from tests.system.multihost.cluster import BIN, FRONTEND, REGISTRY, MultiHostCluster
from tests.system.multihost.net import Network, test_network
from tests.system.multihost.traffic import Loop, answering_hosts

# One xdist worker runs these tests, in order, on one cluster (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("system-multihost")]
APP = "spread"
MACHINES = ["m1", "m2", "m3"]
APP_PY = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = ("host=" + os.environ["PAAS_HOST"] + "\\n").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    with test_network([REGISTRY, FRONTEND, *MACHINES]) as net:
        yield net


@pytest.fixture(scope="module")
def cluster(network: Network) -> Iterator[MultiHostCluster]:
    with short_dir("paas-mh-") as state:
        started = MultiHostCluster(network=network, state=state, machines=list(MACHINES))
        try:
            started.start()
            app = state / "app"
            app.mkdir()
            (app / "Procfile").write_text("web: python app.py\n")
            (app / "app.py").write_text(APP_PY)
            (app / "paas.toml").write_text(
                f'[app]\nname = "{APP}"\ninstances = 2\nmin_healthy_s = 1\n'
            )
            done = paas(started, "deploy", str(app), "--timeout", "120")
            assert done.returncode == 0, done.stdout + done.stderr + started.logs()
            yield started
        finally:
            started.close()


def paas(cluster: MultiHostCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "paas"), *args], capture_output=True, text=True, timeout=180, env=cluster.env()
    )


def running(cluster: MultiHostCluster) -> list[InstanceView]:
    with cluster.client() as api:
        return [i for i in api.list_instances(APP) if i.state == "running"]


def until(
    check: Callable[[], bool], what: str, cluster: MultiHostCluster, limit_s: float = 60
) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")
        time.sleep(0.1)


def routed_hosts(cluster: MultiHostCluster) -> set[str]:
    return cluster.routing().get(APP, set())


def serves_exactly(cluster: MultiHostCluster, hosts: set[str]) -> bool:
    """The frontend answers only from `hosts`, all of them, for 30 requests in a row."""
    seen = answering_hosts(cluster, APP, tries=30)
    return set(seen) == hosts


def settled(cluster: MultiHostCluster, count: int) -> set[str]:
    """Wait until `count` instances run on distinct hosts and the frontend serves exactly
    those hosts; return the hosts."""

    def ready() -> bool:
        hosts = {i.host for i in running(cluster)}
        with cluster.client() as api:
            every = api.list_instances(APP)
        return (
            len(every) == count
            and len(hosts) == count
            and routed_hosts(cluster) == hosts
            and serves_exactly(cluster, hosts)
        )

    until(ready, f"{count} instances on {count} hosts, all served", cluster)
    return {i.host for i in running(cluster)}


def test_two_instances_land_on_two_hosts_and_both_answer(cluster: MultiHostCluster) -> None:
    hosts = settled(cluster, 2)
    assert len(hosts) == 2 and hosts <= set(MACHINES)
    listing = paas(cluster, "ps", APP)
    assert listing.returncode == 0, listing.stderr
    for host in hosts:
        assert host in listing.stdout
    shown = paas(cluster, "hosts")  # with each machine's capacity from its heartbeats
    assert shown.returncode == 0, shown.stderr
    for machine in MACHINES:
        line = next(row for row in shown.stdout.splitlines() if row.split()[:1] == [machine])
        assert " MiB" in line, shown.stdout


def test_scale_up_and_down_and_the_frontend_follows(cluster: MultiHostCluster) -> None:
    done = paas(cluster, "ps:scale", APP, "web=3")
    assert done.returncode == 0, done.stderr
    assert settled(cluster, 3) == set(MACHINES)
    with Loop(cluster, APP) as loop:  # scaling down drops hosts without a failed request
        done = paas(cluster, "ps:scale", APP, "web=1")
        assert done.returncode == 0, done.stderr
        kept = settled(cluster, 1)
        assert len(kept) == 1
        # Past the departing instances' unroute grace: their processes are gone, and the
        # loop goes on for a while after that.
        until(
            lambda: not any(app_processes(cluster, h) for h in set(MACHINES) - kept),
            "the scaled-down instances to stop",
            cluster,
        )
        sent_more(loop)
    assert loop.failures == [], loop.summary()
    done = paas(cluster, "ps:scale", APP, "web=2")
    assert done.returncode == 0, done.stderr
    settled(cluster, 2)


def test_a_host_cut_off_and_back_leaves_no_duplicates(
    cluster: MultiHostCluster, network: Network
) -> None:
    if not network.can_cut:
        pytest.skip("network namespaces are not allowed here: no link to cut")
    before = settled(cluster, 2)
    victim = sorted(before)[0]
    network.cut(victim)
    try:
        until(lambda: host_state(cluster, victim) == "down", f"{victim} marked down", cluster)
        after = settled_without(cluster, victim)
        assert victim not in after
    finally:
        network.restore(victim)
    until(lambda: host_state(cluster, victim) == "up", f"{victim} back up", cluster)
    hosts = settled(cluster, 2)  # the returning host stopped its stale instance
    assert victim not in hosts
    hosts_view = paas(cluster, "hosts")
    assert hosts_view.returncode == 0 and victim in hosts_view.stdout


def test_a_frontend_cut_off_keeps_serving_and_catches_up(
    cluster: MultiHostCluster, network: Network
) -> None:
    """Cut off from the registry (both ways; machines still reachable), the frontend serves
    the set it has; changes made during the cut are routed within seconds of the link coming
    back (a watch sent before the cut can hang for its whole 30 s wait: a report answered with
    a newer index makes it watch again at once)."""
    if not network.can_cut:
        pytest.skip("network namespaces are not allowed here: no link to cut")
    before = settled(cluster, 2)
    network.partition(FRONTEND, REGISTRY)
    try:
        done = paas(cluster, "ps:scale", APP, "web=3")
        assert done.returncode == 0, done.stderr
        until(lambda: routed_hosts(cluster) == set(MACHINES), "3 hosts routed", cluster)
        # The frontend's heartbeats are missed: it is marked down meanwhile.
        until(lambda: host_state(cluster, FRONTEND) == "down", "the frontend marked down", cluster)
        assert set(answering_hosts(cluster, APP, tries=20)) == before  # the old set, served
    finally:
        network.heal(FRONTEND, REGISTRY)
    restored = time.monotonic()
    until(lambda: serves_exactly(cluster, set(MACHINES)), "the frontend routes all 3", cluster)
    caught_up = time.monotonic() - restored
    assert caught_up < 10.0, f"the frontend took {caught_up:.1f} s to pick up the change"
    done = paas(cluster, "ps:scale", APP, "web=2")
    assert done.returncode == 0, done.stderr
    settled(cluster, 2)


def test_a_killed_host_is_replaced_under_load(cluster: MultiHostCluster) -> None:
    before = settled(cluster, 2)
    victim = sorted(before)[0]
    with Loop(cluster, APP) as loop:
        sent_more(loop)  # served before the kill
        killed_at = time.monotonic()
        cluster.kill_host(victim)
        until(lambda: host_state(cluster, victim) == "down", f"{victim} marked down", cluster)
        after = settled_without(cluster, victim)
        converged = time.monotonic()
        sent_more(loop, 40)  # and after it converged
    assert victim not in after and len(after) == 2
    before_detection = loop.failures_since(killed_at)
    assert len(before_detection) <= 20, before_detection
    assert loop.failures_since(converged) == [], loop.failures_since(converged)
    assert loop.hosts.keys() >= after
    shown = paas(cluster, "hosts")
    assert shown.returncode == 0
    line = next(row for row in shown.stdout.splitlines() if victim in row)
    assert "down" in line, shown.stdout
    ps = paas(cluster, "ps", APP)
    rows = [row.split() for row in ps.stdout.splitlines() if f" {victim} " in row]
    assert rows and all("lost" in row for row in rows), ps.stdout  # never shown as running
    assert sum(1 for row in ps.stdout.splitlines() if " running " in row) == 2, ps.stdout


def app_processes(cluster: MultiHostCluster, host: str) -> list[int]:
    """Pids of the app's instances on `host`: its agent's descendants that run app.py."""
    started = cluster.procs.get(host)
    if started is None:
        return []
    found = []
    try:
        children = psutil.Process(started.popen.pid).children(recursive=True)
    except psutil.Error:
        return []
    for child in children:
        try:
            if any(part.endswith("app.py") for part in child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def host_state(cluster: MultiHostCluster, name: str) -> str:
    with cluster.client() as api:
        return next(h.state for h in api.list_hosts() if h.name == name)


def settled_without(cluster: MultiHostCluster, gone: str) -> set[str]:
    """Two instances running, routed and served on hosts other than `gone`."""

    def ready() -> bool:
        hosts = {i.host for i in running(cluster) if i.host != gone}
        return len(hosts) == 2 and routed_hosts(cluster) == hosts and serves_exactly(cluster, hosts)

    until(ready, f"two instances away from {gone}", cluster)
    return {i.host for i in running(cluster) if i.host != gone}
