"""Agent-side faults on a whole local cluster, each caused for real under a request loop
through the frontend: the registry stopped (SIGSTOP, then kill -9 and a restart on the same
port and state), kill -9 of the machine agent and of the frontend agent (restarted with the
same command line), and hand-edited proxy templates that nginx and HAProxy refuse. Every
time: zero failed requests, nothing restarted that did not change, the fault visible."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from agent.machine.run.runrecords import stray_groups
from agent.proxy.render import default_template_dir
from cli.local import FRONTEND, MACHINE, REGISTRY, LocalCluster
from tests.conftest import running_cluster, short_dir
from tests.e2e.helpers import PAAS, REPO, answer_now, log_marks, logged_since, logs, paas
from tests.e2e.request_loop import RequestLoop, sent_more

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-agent-faults")]
APP = "faults"
HOST = f"{APP}.localhost"
GREETING = f"Hello from {APP} (release 1)"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Its own cluster with `faults` deployed: these tests kill its processes."""
    with short_dir("paas-af-") as state, running_cluster(state / "s") as started:
        app = state / APP
        shutil.copytree(
            REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__")
        )
        (app / "paas.toml").write_text(
            f'[app]\nname = "{APP}"\nhealth_path = "/health"\nmin_healthy_s = 0\n'
        )
        done = paas(started, "deploy", str(app), "--timeout", "120")
        assert done.returncode == 0, done.stdout + done.stderr + logs(started)
        try:
            yield started
        finally:
            _kill_app_processes(started)


def _kill_app_processes(cluster: LocalCluster) -> None:
    """Instances and proxies are not children of a restarted agent: end them by their
    process groups if the cluster's own stop left any (only when a test failed)."""
    machine = cluster.state_dir / MACHINE
    for pgid in stray_groups(machine / "apps", keep=set()):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    for pid_file in (machine / "nginx" / "nginx.pid", _haproxy_pid_file(cluster)):
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)


def _haproxy_pid_file(cluster: LocalCluster) -> Path:
    return cluster.state_dir / FRONTEND / "haproxy" / "haproxy.pid"


def app_pids(cluster: LocalCluster) -> dict[int, int]:
    """Instance id -> pid of the app's processes, from the machine agent's run records."""
    found = {}
    for path in (cluster.state_dir / MACHINE / "run").glob("*.json"):
        record = json.loads(path.read_text())
        if record["instance"]["app"] == APP:
            found[record["instance"]["id"]] = record["pid"]
    return found


def proxy_pids(cluster: LocalCluster) -> tuple[int, int]:
    nginx = int((cluster.state_dir / MACHINE / "nginx" / "nginx.pid").read_text())
    haproxy = int(_haproxy_pid_file(cluster).read_text().split()[0])
    return nginx, haproxy


def wait_for(what: str, check: Callable[[], object], cluster: LocalCluster, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + logs(cluster)
        time.sleep(0.1)


def hosts(cluster: LocalCluster) -> dict[str, dict[str, object]]:
    done = paas(cluster, "--json", "hosts", timeout=60)
    assert done.returncode == 0, done.stderr
    return {h["name"]: h for h in json.loads(done.stdout)}


def heartbeat_after(cluster: LocalCluster, name: str, moment: float) -> Callable[[], bool]:
    """True once host `name` reported after `moment` (a time.time() value)."""

    def check() -> bool:
        with contextlib.suppress(Exception):
            with cluster.client() as api:
                host = next(h for h in api.list_hosts() if h.name == name)
            return host.last_heartbeat is not None and host.last_heartbeat.timestamp() > moment
        return False

    return check


def test_registry_stopped_then_killed_and_restarted(cluster: LocalCluster) -> None:
    before, proxies = app_pids(cluster), proxy_pids(cluster)
    registry_pid = cluster.processes()[REGISTRY]["pid"]
    start = log_marks(cluster)
    with RequestLoop(cluster, HOST, expect=GREETING) as loop:
        os.kill(registry_pid, signal.SIGSTOP)  # hangs every open watch and report
        try:
            sent_more(loop, 40)  # answered while the registry hangs
            assert loop.sent > 20 and not loop.failures, loop.summary()
        finally:
            marks = log_marks(cluster)
            cluster.kill(REGISTRY)  # SIGKILL reaches a stopped process too
        # Down for good: connections refused now, and both agents have seen it.
        for host in (MACHINE, FRONTEND):
            wait_for(
                f"{host} to find the registry unreachable",
                lambda h=host: "registry unreachable" in logged_since(cluster, h, marks),
                cluster,
            )
        # A report is tried at the latest one heartbeat later: wait until it has failed, or
        # the registry could be back before the reporter ever noticed it was gone.
        wait_for(
            "the machine agent's reports to fail",
            lambda: "could not report to the registry" in logged_since(cluster, MACHINE, start),
            cluster,
        )
        sent_more(loop)
        restarted_at = time.time()
        cluster.restart(REGISTRY)
        for host in (MACHINE, FRONTEND):
            reported = heartbeat_after(cluster, host, restarted_at)
            wait_for(f"{host} to report again", reported, cluster)
    assert loop.sent > 50 and not loop.failures, loop.summary()
    assert app_pids(cluster) == before and proxy_pids(cluster) == proxies
    machine_log = cluster.log_path(MACHINE).read_text()
    assert "registry unreachable, everything keeps running" in machine_log
    assert "reports reach the registry again" in machine_log
    answer_now(cluster, HOST, GREETING)


@pytest.mark.parametrize("agent", [MACHINE, FRONTEND])
def test_agent_killed_is_restarted_and_adopts_everything(cluster: LocalCluster, agent: str) -> None:
    before, proxies = app_pids(cluster), proxy_pids(cluster)
    with RequestLoop(cluster, HOST, expect=GREETING) as loop:
        cluster.kill(agent)  # SIGKILL: instances and proxies keep running on their own
        sent_more(loop, 30)  # answered with no agent
        assert app_pids(cluster) == before and proxy_pids(cluster) == proxies
        restarted_at = time.time()
        cluster.restart(agent)
        wait_for(f"{agent} to report again", heartbeat_after(cluster, agent, restarted_at), cluster)
        sent_more(loop, 30)  # answered after the adoption
    assert loop.sent > 50 and not loop.failures, loop.summary()
    assert app_pids(cluster) == before and proxy_pids(cluster) == proxies
    log = cluster.log_path(agent).read_text()
    if agent == MACHINE:
        assert "adopted the running nginx master" in log
        assert "adopted running pid" in log
        apps = cluster.state_dir / MACHINE / "apps"
        assert stray_groups(apps, keep=set(before.values())) == set()  # never two copies
        status = json.loads(paas(cluster, "status", APP, "--json").stdout)
        assert [(i["state"], i["routed"]) for i in status["instances"]] == [("running", True)]
    else:
        assert "adopted the running HAProxy master" in log
    answer_now(cluster, HOST, GREETING)


def _break(template: Path, name: str, bad_line: str, after: str) -> None:
    good = (default_template_dir() / name).read_text()
    assert after in good
    template.parent.mkdir(parents=True, exist_ok=True)
    template.write_text(good.replace(after, after + bad_line, 1))


def test_hand_edited_broken_templates_are_reported_and_serving_continues(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Operator overrides in <state>/templates with errors only the real validators see:
    `paas hosts` shows both validators' messages, the live configs keep serving, and removing
    the bad files is enough to recover (the deploy waiting on them then completes)."""
    nginx_override = cluster.state_dir / MACHINE / "templates" / "nginx.conf.j2"
    haproxy_override = cluster.state_dir / FRONTEND / "templates" / "haproxy.cfg.j2"
    _break(nginx_override, "nginx.conf.j2", "    no_such_directive on;\n", "http {\n")
    _break(haproxy_override, "haproxy.cfg.j2", "    no-such-keyword\n", "defaults\n")
    other = tmp_path / "other"
    shutil.copytree(
        REPO / "examples" / "hello", other, ignore=shutil.ignore_patterns("__pycache__")
    )
    (other / "paas.toml").write_text(
        '[app]\nname = "other"\nhealth_path = "/health"\nmin_healthy_s = 0\n'
    )
    deploy = None
    try:
        with RequestLoop(cluster, HOST, expect=GREETING) as loop:
            # A new app changes both configs: each render is refused by its validator.
            deploy = subprocess.Popen(
                [PAAS, "deploy", str(other), "--timeout", "120"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=cluster.env(),
            )
            wait_for(
                "both proxy errors",
                lambda: all(hosts(cluster)[h]["proxy_error"] for h in (MACHINE, FRONTEND)),
                cluster,
            )
            found = hosts(cluster)
            assert 'unknown directive "no_such_directive"' in found[MACHINE]["proxy_error"]
            assert "no-such-keyword" in found[FRONTEND]["proxy_error"]
            table = paas(cluster, "hosts", timeout=60).stdout
            assert "no_such_directive" in table and "no-such-keyword" in table, table
            sent_more(loop)  # the live configs keep serving meanwhile
            nginx_override.unlink()
            haproxy_override.unlink()
            out, _ = deploy.communicate(timeout=120)
            assert deploy.returncode == 0, out + logs(cluster)
        assert loop.sent > 50 and not loop.failures, loop.summary()
        wait_for(
            "proxy errors cleared",
            lambda: not any(hosts(cluster)[h]["proxy_error"] for h in (MACHINE, FRONTEND)),
            cluster,
        )
        answer_now(cluster, "other.localhost", "Hello from other (release 1)")
    finally:
        nginx_override.unlink(missing_ok=True)
        haproxy_override.unlink(missing_ok=True)
        if deploy is not None and deploy.poll() is None:
            deploy.kill()
            deploy.wait(timeout=10)


def test_local_down_still_stops_adopted_processes(cluster: LocalCluster) -> None:
    """SIGTERM (`paas local down`) stops what an agent adopted after a SIGKILL, too."""
    pids = [*app_pids(cluster).values(), *proxy_pids(cluster)]
    assert all(psutil.pid_exists(pid) for pid in pids)
    cluster.down(timeout=20)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
