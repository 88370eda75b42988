"""Failed releases hurt nothing: each fault is caused for real while requests keep flowing.

An app `faults` serves release 1; then a requirement that is not on PyPI, a process that exits
at start and a health check that answers 500 are each deployed. Every one must fail with its
reason (printed by `paas deploy`, which exits non-zero, and shown by `paas status`) while a
request loop through the frontend sees release 1 answer every time. So must an app that
passes its health checks and exits 5 s later (tests/e2e/apps/crashes-later): it is caught in
its min_healthy_s window, before release 1 is stopped. A machine agent whose disk is full (a
real 2 MiB tmpfs) fails a release cleanly the same way. Last, the release phase: a failed
install before it is an install failure in plain text, and its output is shown.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.local import MACHINE, LocalCluster
from tests.e2e.helpers import REPO, answer_now, logs, paas
from tests.e2e.request_loop import RequestLoop, sent_more
from tests.support.mounts import tmpfs

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-1")]
APP = "faults"
HOST = f"{APP}.localhost"
HEALTH_TIMEOUT_S = 3  # keeps the "health check never passes" case short
MIN_HEALTHY_S = 1  # the health window of these test apps (users get 10 s by default)
CRASHES_LATER = Path(__file__).parent / "apps" / "crashes-later"


def app_copy(root: Path, name: str = APP) -> Path:
    app = root / name
    shutil.copytree(REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "paas.toml").write_text(
        f'[app]\nname = "{name}"\nhealth_path = "/health"\nhealth_timeout = {HEALTH_TIMEOUT_S}\n'
        f"min_healthy_s = {MIN_HEALTHY_S}\n"
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
        started = time.monotonic()
        code, out = deploy(cluster, app)
        took = time.monotonic() - started
        sent_more(loop, 10)  # and after the refusal
    print(f"{app.name}: failed in {took:.1f} s; {loop.summary()}")  # -s
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


def test_process_that_crashes_after_it_was_healthy(serving: LocalCluster, tmp_path: Path) -> None:
    """Healthy for 5 s, then exit 1: failed within its 8 s window, release 1 never stopped."""
    app = tmp_path / "crashes-later"
    shutil.copytree(CRASHES_LATER, app)
    toml = (app / "paas.toml").read_text().replace('name = "crashes-later"', f'name = "{APP}"')
    (app / "paas.toml").write_text(toml)
    out = failing_deploy(serving, app)
    assert "must stay healthy 8 s before the switch" in out, out
    assert f"failed: release v5 of {APP}: instance " in out, out
    assert " (web) on host machine-1 crashed (exited with status 1 while running)" in out, out
    assert "did not stay healthy within 8 s before the switch; v1 keeps serving" in out, out
    releases = json.loads(paas(serving, "releases", APP, "--json").stdout)
    assert [(r["version"], r["status"]) for r in releases[:2]] == [(5, "failed"), (4, "failed")]
    status = paas(serving, "status", APP).stdout
    assert "release v1: active, stage routed" in status and "crashing" not in status, status


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
        sent_more(loop, 10)  # and release 1 goes on answering after the refusal
    assert code != 0, out
    assert "failed: release v2 of diskfull: no space left on the agent's disk" in out, out
    assert loop.sent >= 10 and not loop.failures, loop.summary()
    releases = small_agent_disk / "releases"
    assert sorted(p.name for p in releases.iterdir()) == ["1"]  # nothing half-unpacked
    answer_now(cluster, "diskfull.localhost", "(release 1)")


def test_install_failure_before_the_release_phase_is_an_install_failure(
    serving: LocalCluster, tmp_path: Path
) -> None:
    app = app_copy(tmp_path)
    (app / "Procfile").write_text("web: python app.py\nrelease: echo migrate\n")
    (app / "requirements.txt").write_text("paas-no-such-package-xyz==1.0\n")
    out = failing_deploy(serving, app)
    assert (
        f"failed: release v6 of {APP}: install failed on host machine-1; the release phase"
        " (`echo migrate`) did not run:\ninstalling the requirements failed"
    ) in out, out
    assert "paas-no-such-package-xyz was not found" in out, out
    assert "(`echo migrate`) on host machine-1 exited" not in out, out  # it never ran
    assert "answered 404" not in out, out
    assert "\\n" not in out and '{"detail"' not in out, out  # plain text, not JSON


def test_release_phase_output_is_shown_and_kept(serving: LocalCluster, tmp_path: Path) -> None:
    """Last of the module: release 7 replaces release 1, with no failed request."""
    app = app_copy(tmp_path)
    (app / "Procfile").write_text(
        "web: python app.py\nrelease: echo migrating the database; echo 3 migrations applied\n"
    )
    with RequestLoop(serving, HOST, expect=f"from {APP} (release ") as loop:
        code, out = deploy(serving, app)
        sent_more(loop, 10)  # and after the switch
    assert code == 0, out + logs(serving)
    assert "  release> migrating the database\n  release> 3 migrations applied\n" in out, out
    assert loop.sent >= 10 and not loop.failures, loop.summary()
    answer_now(serving, HOST, "(release 7)")
    shown = paas(serving, "releases", APP, "7")
    assert shown.returncode == 0, shown.stderr
    assert "release phase output:\n  migrating the database\n  3 migrations applied" in (
        shown.stdout
    ), shown.stdout
