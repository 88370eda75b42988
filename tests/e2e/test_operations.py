"""Operations through the real `paas` CLI on a real cluster: logs (-f), one-off runs, deploy
tokens, the audit log, /metrics on the registry and the machine agent, the status page in
headless Chromium."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from cli.local import LocalCluster
from tests.e2e.helpers import PAAS, REPO, https_get, logs, paas
from tests.support.prom import metric

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-1")]
APP = "ops"
OTHER = "ops-other"
# The apps here have no health window (min_healthy_s = 0): no test waits one out.


def registry_metrics(cluster: LocalCluster) -> str:
    return httpx.get(f"{cluster.registry_url}/metrics", timeout=10).text


def agent_metrics(cluster: LocalCluster) -> str:
    return httpx.get(f"http://127.0.0.1:{cluster.ports.agent_api}/metrics", timeout=10).text


@pytest.fixture(scope="module")
def ops_app(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("ops") / APP
    shutil.copytree(
        REPO / "examples" / "hello", folder, ignore=shutil.ignore_patterns("__pycache__")
    )
    (folder / "paas.toml").write_text(
        f'[app]\nname = "{APP}"\nhealth_path = "/health"\nmin_healthy_s = 0\n'
    )
    before = metric(registry_metrics(cluster), "paas_registry_deploys_total", result="succeeded")
    done = paas(cluster, "deploy", str(folder), "--timeout", "180")
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    after = metric(registry_metrics(cluster), "paas_registry_deploys_total", result="succeeded")
    assert after == before + 1
    made = paas(cluster, "config:set", APP, "SOME_CONFIG=forty-two", "--timeout", "180")
    assert made.returncode == 0, made.stdout + made.stderr + logs(cluster)
    created = paas(cluster, "apps:create", OTHER)
    assert created.returncode == 0, created.stderr
    yield APP


def test_logs_follow_shows_a_line_printed_after_it_started(
    cluster: LocalCluster, ops_app: str
) -> None:
    follower = subprocess.Popen(
        [PAAS, "logs", ops_app, "-f", "--lines", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.env(),
    )
    seen: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [seen.put(line) for line in follower.stdout],  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    # `--lines 0` shows nothing printed before the follow was open: a request every 0.5 s,
    # each with a marker of its own, until one of them is followed (no fixed wait for it).
    markers: list[str] = []
    found = None
    try:
        deadline = time.monotonic() + 20
        next_request = 0.0
        while found is None and time.monotonic() < deadline:
            if time.monotonic() >= next_request:
                markers.append(f"/marker-{uuid.uuid4().hex[:12]}")
                assert https_get(cluster, f"{ops_app}.localhost", markers[-1]).status_code == 200
                next_request = time.monotonic() + 0.5
            try:
                line = seen.get(timeout=0.1)
            except queue.Empty:
                continue
            if any(m in line for m in markers):
                found = line
        assert found is not None, f"{markers} never followed\n" + logs(cluster)
        marker = next(m for m in markers if m in found)
        stamp, _, rest = found.partition(" ")
        assert stamp.endswith("Z") and stamp[:2] == "20"
        assert rest.startswith(f"{ops_app}.") and "@machine-1: " in rest
    finally:
        follower.terminate()
        follower.wait(timeout=10)

    history = paas(cluster, "logs", ops_app, "--since", "10m", "--lines", "500")
    assert history.returncode == 0, history.stderr
    assert marker in history.stdout
    one_host = paas(cluster, "logs", ops_app, "--host", "machine-1")
    assert one_host.returncode == 0 and marker in one_host.stdout


def test_run_prints_config_and_exits_with_the_command_status(
    cluster: LocalCluster, ops_app: str
) -> None:
    code = 'import os,sys; print(os.environ["SOME_CONFIG"]); sys.exit(3)'
    done = paas(cluster, "run", ops_app, "--", "python", "-c", code, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.strip() == "forty-two"
    # The release's files are the working directory; stderr stays stderr.
    code = "import os,sys; print(sorted(os.listdir('.'))[0:3], file=sys.stderr)"
    done = paas(cluster, "run", ops_app, "--", "python", "-c", code, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Procfile" in done.stderr and done.stdout == ""


def test_run_is_killed_when_the_client_goes_away(cluster: LocalCluster, ops_app: str) -> None:
    marker = f"sleeper-{uuid.uuid4().hex[:8]}"
    client = subprocess.Popen(
        [PAAS, "run", ops_app, "--", "python", "-c", "import time; time.sleep(120)", marker],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cluster.env(),
    )
    try:
        assert wait_until(lambda: running(marker), 30), "the one-off command never started"
    finally:
        client.kill()
        client.wait(timeout=10)
    assert wait_until(lambda: not running(marker), 20), "the command outlived its client"


def running(marker: str) -> bool:
    return any(marker in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_deploy_token_cannot_touch_another_app(
    cluster: LocalCluster, ops_app: str, tmp_path: Path
) -> None:
    made = paas(cluster, "tokens:create", "--scope", "deploy", "--app", ops_app, "--name", "ci")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()

    def as_deployer(*args: str) -> subprocess.CompletedProcess[str]:
        return paas(cluster, *args, env={"PAAS_TOKEN": token}, timeout=120)

    folder = tmp_path / ops_app
    shutil.copytree(
        REPO / "examples" / "hello", folder, ignore=shutil.ignore_patterns("__pycache__")
    )
    (folder / "paas.toml").write_text(
        f'[app]\nname = "{ops_app}"\nhealth_path = "/health"\nmin_healthy_s = 0\n'
    )
    (folder / "version.txt").write_text("deployed with a deploy token\n")
    deployed = as_deployer("deploy", str(folder), "--timeout", "180")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr + logs(cluster)
    assert "routed" in deployed.stdout
    (folder / "paas.toml").write_text(
        f'[app]\nname = "{OTHER}"\nhealth_path = "/health"\nmin_healthy_s = 0\n'
    )
    refused_deploy = as_deployer("deploy", str(folder), "--timeout", "60")
    assert refused_deploy.returncode != 0 and "(403)" in refused_deploy.stderr

    own = as_deployer("config", ops_app)
    assert own.returncode == 0, own.stderr
    assert "SOME_CONFIG" in own.stdout
    ran = as_deployer("run", ops_app, "--", "true")
    assert ran.returncode == 0, ran.stderr
    for args in (
        ("config:set", OTHER, "A=1"),
        ("config", OTHER),
        ("run", OTHER, "--", "true"),
        ("logs", OTHER),
        ("ps:scale", OTHER, "web=2"),
        ("apps:delete", ops_app, "--yes"),
    ):
        refused = as_deployer(*args)
        assert refused.returncode != 0, (args, refused.stdout)
        assert "(403)" in refused.stderr, (args, refused.stderr)
    assert "may not touch app 'ops-other'" in as_deployer("config", OTHER).stderr
    assert as_deployer("tokens").returncode != 0

    listed = paas(cluster, "tokens", "--json")
    ci = next(t for t in json.loads(listed.stdout) if t["name"] == "ci")
    assert ci["scope"] == "deploy" and ci["app"] == ops_app and token not in listed.stdout
    revoked = paas(cluster, "tokens:revoke", str(ci["id"]))
    assert revoked.returncode == 0, revoked.stderr
    assert as_deployer("config", ops_app).returncode != 0


def test_audit_lists_the_calls(cluster: LocalCluster, ops_app: str) -> None:
    listed = paas(cluster, "audit", "--app", OTHER, "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    refusals = [e for e in entries if e["status"] == 403 and e["scope"] == "deploy"]
    assert any(e["route"] == "/v1/apps/{app}/config" for e in refusals), entries
    assert all(e["token_name"] == "ci" for e in refusals)
    table = paas(cluster, "audit", "--since", "1h")
    assert table.returncode == 0, table.stderr
    for text in ("POST /v1/tokens", "PATCH /v1/apps/{app}/config", "POST /v1/apps/{app}/run"):
        assert text in table.stdout, table.stdout
    assert "forty-two" not in table.stdout  # config values never reach the log


def test_metrics_of_registry_and_agent_move(cluster: LocalCluster, ops_app: str) -> None:
    registry = registry_metrics(cluster)
    assert metric(registry, "paas_registry_deploys_total", result="succeeded") >= 2
    assert metric(registry, "paas_registry_scheduling_seconds_count") >= 1
    assert "paas_registry_watch_waiters" in registry
    assert metric(registry, "paas_registry_watch_waiters") >= 1  # the agents' watches
    requests_before = metric(
        registry, "paas_registry_requests_total", method="GET", route="/v1/apps", status="200"
    )
    assert paas(cluster, "apps").returncode == 0
    requests_after = metric(
        registry_metrics(cluster),
        "paas_registry_requests_total",
        method="GET",
        route="/v1/apps",
        status="200",
    )
    assert requests_after == requests_before + 1

    agent = agent_metrics(cluster)
    assert metric(agent, "paas_agent_instances", state="running") >= 1
    reloads = metric(agent, "paas_agent_proxy_reloads_total", result="reloaded")
    assert reloads >= 1
    assert metric(agent, "paas_agent_render_seconds_count") >= 1
    # A config change rolls the app: the agent reloads nginx again.
    done = paas(cluster, "config:set", ops_app, "OTHER=1", "--timeout", "180")
    assert done.returncode == 0, done.stderr
    later = agent_metrics(cluster)
    assert metric(later, "paas_agent_proxy_reloads_total", result="reloaded") > reloads


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
def test_status_page_renders_the_cluster_in_chromium(
    cluster: LocalCluster, ops_app: str, tmp_path: Path
) -> None:
    assert httpx.get(f"{cluster.registry_url}/status", timeout=10).status_code == 401
    token = cluster.tokens()["admin_token"]
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--dump-dom",
            f"{cluster.registry_url}/status?token={token}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "paas cluster" in dom, dom[:2000] + done.stderr[-2000:]
    for name in (ops_app, OTHER, "machine-1", "frontend-1"):
        assert f'data-app="{name}"' in dom or f'data-host="{name}"' in dom, name
    assert "PATCH /v1/apps/{app}/config" in dom  # recent events from the audit log
    assert token not in dom
