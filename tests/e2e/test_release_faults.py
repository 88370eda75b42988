"""Failed releases hurt nothing: each fault is caused for real while requests keep flowing.

An app `faults` serves release 1; then a requirement that is not on PyPI, a process that exits
at start and a health check that answers 500 are each deployed. Every one must fail with its
reason (printed by `paas deploy`, which exits non-zero, and shown by `paas status`) while a
request loop through the frontend sees release 1 answer every time. Last, a machine agent
whose disk is full (a real 2 MiB tmpfs) fails a release cleanly the same way.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.local import MACHINE, LocalCluster
from tests.e2e.helpers import REPO, answer_now, logs, paas
from tests.e2e.request_loop import RequestLoop
from tests.mounts import tmpfs

pytestmark = pytest.mark.e2e
APP = "faults"
HOST = f"{APP}.localhost"
HEALTH_TIMEOUT_S = 3  # keeps the "health check never passes" case short


def app_copy(root: Path, name: str = APP) -> Path:
    app = root / name
    shutil.copytree(REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "paas.toml").write_text(
        f'[app]\nname = "{name}"\nhealth_path = "/health"\nhealth_timeout = {HEALTH_TIMEOUT_S}\n'
    )
    return app


def deploy(cluster: LocalCluster, app: Path) -> tuple[int, str]:
    done = paas(cluster, "deploy", str(app), "--timeout", "180")
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def serving(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> LocalCluster:
    code, out = deploy(cluster, app_copy(tmp_path_factory.mktemp("v1")))
    assert code == 0, out + logs(cluster)
    answer_now(cluster, HOST, "release 1")
    return cluster


def failing_deploy(cluster: LocalCluster, app: Path) -> str:
    """Deploy `app` under load; it must fail, and release 1 must answer every request."""
    with RequestLoop(cluster, HOST, expect="(release 1)") as loop:
        code, out = deploy(cluster, app)
    assert code != 0, out
    assert loop.sent >= 10 and not loop.failures, loop.summary()
    assert "Traceback" not in out, out
    answer_now(cluster, HOST, "(release 1)")
    return out


def test_uninstallable_requirement_names_it(serving: LocalCluster, tmp_path: Path) -> None:
    app = app_copy(tmp_path)
    (app / "requirements.txt").write_text("paas-no-such-package-xyz==1.0\n")
    out = failing_deploy(serving, app)
    assert f"failed: release v2 of {APP}: installing the requirements failed" in out, out
    assert "paas-no-such-package-xyz was not found" in out, out


def test_process_that_exits_at_start(serving: LocalCluster, tmp_path: Path) -> None:
    app = app_copy(tmp_path)
    (app / "Procfile").write_text(
        'web: python -c \'import sys; print("booting"); sys.exit("SECRET_KEY is not set")\'\n'
    )
    out = failing_deploy(serving, app)
    assert f"failed: release v3 of {APP}: exited with status 1" in out, out
    assert "SECRET_KEY is not set" in out, out  # the last lines of the process log


def test_health_check_that_never_passes(serving: LocalCluster, tmp_path: Path) -> None:
    app = app_copy(tmp_path)
    code = (app / "app.py").read_text()
    patched = code.replace(
        "self.send_response(200)", 'self.send_response(500 if self.path == "/health" else 200)'
    )
    assert patched != code
    (app / "app.py").write_text(patched)
    out = failing_deploy(serving, app)
    assert f"failed: release v4 of {APP}: health check did not pass within 3s" in out, out
    assert "500" in out, out


def test_status_and_releases_show_the_failures(serving: LocalCluster) -> None:
    shown = paas(serving, "status", APP)
    assert shown.returncode == 0, shown.stderr
    assert "release v1: active" in shown.stdout, shown.stdout
    assert "latest release v4" in shown.stdout and "failed" in shown.stdout, shown.stdout
    assert "health check did not pass within 3s" in shown.stdout, shown.stdout
    status = json.loads(paas(serving, "status", APP, "--json").stdout)
    assert status["release"]["version"] == 1
    assert status["latest"]["version"] == 4 and status["latest"]["status"] == "failed"
    releases = json.loads(paas(serving, "releases", APP, "--json").stdout)
    assert [(r["version"], r["status"]) for r in releases] == [
        (4, "failed"),
        (3, "failed"),
        (2, "failed"),
        (1, "active"),
    ]
    assert "paas-no-such-package-xyz" in releases[2]["error"]
    assert all(r["description"].startswith("deploy ") for r in releases)


@pytest.fixture
def small_agent_disk(cluster: LocalCluster) -> Iterator[Path]:
    """The machine agent's folder for app `diskfull` on a 2 MiB tmpfs."""
    with tmpfs(cluster.state_dir / MACHINE / "apps" / "diskfull", size="2m") as mounted:
        try:
            yield mounted
        finally:
            paas(cluster, "apps:delete", "diskfull", "--yes")  # stops its process first


def test_full_disk_on_the_agent(
    cluster: LocalCluster, small_agent_disk: Path, tmp_path: Path
) -> None:
    code, out = deploy(cluster, app_copy(tmp_path / "v1", "diskfull"))
    assert code == 0, out + logs(cluster)
    big = app_copy(tmp_path / "v2", "diskfull")
    (big / "data.txt").write_text("a" * (3 << 20))  # packs small, unpacks to 3 MiB
    with RequestLoop(cluster, "diskfull.localhost", expect="(release 1)") as loop:
        code, out = deploy(cluster, big)
    assert code != 0, out
    assert "failed: release v2 of diskfull: no space left on the agent's disk" in out, out
    assert loop.sent >= 10 and not loop.failures, loop.summary()
    releases = small_agent_disk / "releases"
    assert sorted(p.name for p in releases.iterdir()) == ["1"]  # nothing half-unpacked
    answer_now(cluster, "diskfull.localhost", "(release 1)")
