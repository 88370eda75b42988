"""kill -9 of the registry in the middle of a deploy and of an upload, then a restart on the
same port and state folder: the deploy resolves, `paas deploy` (which retries its watch)
tells the truth, the app serves throughout, and the state on disk is whole."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cli.errors import CliError
from cli.local import FRONTEND, MACHINE, REGISTRY, LocalCluster
from tests.conftest import running_cluster, short_dir
from tests.e2e.helpers import PAAS, REPO, answer_now, log_marks, logged_since, logs, paas
from tests.e2e.request_loop import RequestLoop

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-registry-restart")]
APP = "restart"
HOST = f"{APP}.localhost"


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[LocalCluster]:
    """Its own cluster: killing the shared session's registry would disturb other tests."""
    with short_dir("paas-rr-") as state, running_cluster(state / "s") as started:
        yield started


def app_copy(root: Path, *, slow_start_s: float = 0) -> Path:
    app = root / APP
    shutil.copytree(REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "paas.toml").write_text(
        f'[app]\nname = "{APP}"\nhealth_path = "/health"\nmin_healthy_s = 1\n'
    )
    if slow_start_s:
        code = (app / "app.py").read_text()
        slow = code.replace(
            "def main():\n", f"def main():\n    __import__('time').sleep({slow_start_s})\n"
        )
        assert slow != code
        (app / "app.py").write_text(slow)
    return app


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def instance_states(cluster: LocalCluster, version: int) -> set[str]:
    try:
        with cluster.client() as api:
            releases = api.list_releases(APP)
    except CliError:
        return set()
    return {i.state for r in releases if r.version == version for i in r.instances}


def test_registry_killed_mid_deploy(own_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = own_cluster
    first = paas(cluster, "deploy", str(app_copy(tmp_path / "v1")), "--timeout", "120")
    assert first.returncode == 0, first.stdout + first.stderr + logs(cluster)

    with RequestLoop(cluster, HOST, expect=f"Hello from {APP} (release ") as loop:
        deploy = subprocess.Popen(
            [PAAS, "deploy", str(app_copy(tmp_path / "v2", slow_start_s=4)), "--timeout", "150"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cluster.env(),
        )
        try:
            wait_for("release 2 to start", lambda: "starting" in instance_states(cluster, 2))
            marks = log_marks(cluster)
            cluster.kill(REGISTRY)  # SIGKILL while release 2 is deploying
            for host in (MACHINE, FRONTEND):  # down for good: both agents have seen it
                wait_for(
                    f"{host} to find the registry unreachable",
                    lambda h=host: "registry unreachable" in logged_since(cluster, h, marks),
                )
            cluster.restart(REGISTRY)
            out, err = deploy.communicate(timeout=170)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait(timeout=10)

    with cluster.client() as api:
        release, _ = api.watch_release(APP, 2)
    assert release.status in ("active", "failed"), release
    # `paas deploy` tells the truth: exit 0 exactly when the release is active.
    assert (deploy.returncode == 0) == (release.status == "active"), out + err
    assert release.status == "active", out + err + logs(cluster)
    assert "lost the registry" in out and "the registry answers again" in out, out
    assert "routed" in out, out
    assert loop.sent >= 20 and not loop.failures, loop.summary()
    answer_now(cluster, HOST, f"Hello from {APP} (release 2)")

    database = cluster.state_dir / "registry" / "registry.db"
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_registry_killed_mid_upload_leaves_nothing(own_cluster: LocalCluster) -> None:
    cluster = own_cluster
    chunk, count = os.urandom(1 << 16), 200
    sha = hashlib.sha256(chunk * count).hexdigest()
    partials = cluster.state_dir / "registry" / "artifacts" / sha[:2]

    def slow_body() -> Iterator[bytes]:
        for _ in range(count):
            yield chunk
            time.sleep(0.02)

    def upload() -> None:
        headers = {"Authorization": f"Bearer {cluster.tokens()['admin_token']}"}
        with contextlib.suppress(httpx.HTTPError):  # the registry dies under it: the point
            httpx.put(
                f"{cluster.registry_url}/v1/artifacts/{sha}",
                content=slow_body(),
                headers=headers,
                timeout=30,
            )

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    try:
        wait_for(
            "a partial upload", lambda: any(p.stat().st_size for p in partials.glob(".upload-*"))
        )
        cluster.kill(REGISTRY)
    finally:
        uploader.join(timeout=30)
    assert list(partials.glob(".upload-*")), "the kill should leave a temp file behind"
    cluster.restart(REGISTRY)
    assert list(partials.glob(".upload-*")) == []  # removed at start, never visible
    headers = {"Authorization": f"Bearer {cluster.tokens()['admin_token']}"}
    head = httpx.head(f"{cluster.registry_url}/v1/artifacts/{sha}", headers=headers)
    assert head.status_code == 404
    answer_now(cluster, HOST, f"Hello from {APP} (release 2)")
