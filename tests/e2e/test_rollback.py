"""`paas rollback`: a new release with an earlier release's code, health-gated, under load."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from cli.local import LocalCluster
from tests.e2e.helpers import REPO, answer_now, logs, paas
from tests.e2e.request_loop import RequestLoop, sent_more

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-1")]
APP = "rollme"
HOST = f"{APP}.localhost"


def version(root: Path, greeting: str) -> Path:
    app = root / greeting.lower()
    shutil.copytree(REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__"))
    code = (app / "app.py").read_text()
    (app / "app.py").write_text(code.replace('"Hello from', f'"{greeting} from'))
    (app / "paas.toml").write_text(
        f'[app]\nname = "{APP}"\nhealth_path = "/health"\nmin_healthy_s = 0\n'
    )  # no health window: the switch is what is checked, not the wait before it
    return app


def timed(cluster: LocalCluster, *args: str) -> tuple[float, str]:
    start = time.monotonic()
    done = paas(cluster, *args, "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    return time.monotonic() - start, done.stdout


def test_rollback_restores_the_previous_answer(cluster: LocalCluster, tmp_path: Path) -> None:
    timed(cluster, "deploy", str(version(tmp_path, "One")))
    deploy_s, _ = timed(cluster, "deploy", str(version(tmp_path, "Two")))
    answer_now(cluster, HOST, "Two from rollme (release 2)")

    with RequestLoop(cluster, HOST, expect=" from rollme (release ") as loop:
        rollback_s, out = timed(cluster, "rollback", APP)
        sent_more(loop, 10)  # and after the switch
    assert "release v3 of rollme: rollback to v1" in out and "routed" in out, out
    answer_now(cluster, HOST, "One from rollme (release 3)")
    assert loop.sent >= 10 and not loop.failures, loop.summary()
    print(f"deploy took {deploy_s:.2f}s, rollback {rollback_s:.2f}s")  # shown with -s

    _, out = timed(cluster, "rollback", APP, "2")
    assert "release v4 of rollme: rollback to v2" in out, out
    answer_now(cluster, HOST, "Two from rollme (release 4)")

    releases = json.loads(paas(cluster, "releases", APP, "--json").stdout)
    assert [(r["version"], r["status"], r["description"]) for r in releases[:3]] == [
        (4, "active", "rollback to v2"),
        (3, "superseded", "rollback to v1"),
        (2, "superseded", releases[2]["description"]),
    ]
    assert releases[2]["description"].startswith("deploy ")
    assert releases[3]["artifact_sha256"] == releases[1]["artifact_sha256"]
    table = paas(cluster, "releases", APP).stdout
    assert "rollback to v1" in table and "superseded" in table, table


def test_rollback_refusals_are_one_line(cluster: LocalCluster) -> None:
    missing = paas(cluster, "rollback", "no-such-app")
    assert missing.returncode != 0
    assert missing.stderr.strip() == "error: app no-such-app does not exist (404)"
    active = json.loads(paas(cluster, "status", APP, "--json").stdout)["release"]["version"]
    same = paas(cluster, "rollback", APP, str(active))
    assert same.returncode != 0
    assert f"release v{active} of {APP} is already the active release (409)" in same.stderr
