"""`depends_on`: web reaches users through USERS_URL (a fixed local service endpoint), and
keeps doing so, without a restart, when users is redeployed. Refused graphs change nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli.local import LocalCluster
from tests.e2e.helpers import REPO, https_get, logs, paas

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-1")]


def copy_example(root: Path, name: str) -> Path:
    """The example with no health window (min_healthy_s = 0 instead of the 10 s default):
    what is checked here is the environment web gets, not the wait before a switch."""
    app = root / name
    shutil.copytree(REPO / "examples" / name, app, ignore=shutil.ignore_patterns("__pycache__"))
    toml = (app / "paas.toml").read_text()
    (app / "paas.toml").write_text(toml.replace("[app]\n", "[app]\nmin_healthy_s = 0\n", 1))
    return app


def deploy(cluster: LocalCluster, app: Path) -> str:
    done = paas(cluster, "deploy", str(app), "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    return done.stdout


def web_json(cluster: LocalCluster, path: str = "/") -> dict[str, object]:
    response = https_get(cluster, "web.localhost", path)
    assert response.status_code == 200, f"{response.status_code} {response.text}\n" + logs(cluster)
    return json.loads(response.text)


def test_web_answers_with_data_from_users(cluster: LocalCluster, tmp_path: Path) -> None:
    users, web = copy_example(tmp_path, "users"), copy_example(tmp_path, "web")

    # A dependency on an app that does not exist is refused, and nothing is deployed.
    refused = paas(cluster, "deploy", str(web), "--timeout", "60")
    assert refused.returncode != 0
    assert "depends on users, which does not exist" in refused.stderr, refused.stderr
    assert json.loads(paas(cluster, "status", "web", "--json").stdout)["release"] is None

    deploy(cluster, users)
    plan = paas(cluster, "deploy", str(web), "--plan")
    assert plan.returncode == 0 and "+ USERS_URL='http://127.0.0.1:" in plan.stdout, plan
    out = deploy(cluster, web)
    assert "release v1 of web" in out, out  # the refused deploy created no release

    answer = web_json(cluster)
    assert answer["users"][0]["name"] == "Ada Lovelace", answer
    assert answer["served_by"]["app"] == "users", answer
    assert answer["served_by"]["release"] == "1", answer
    before = web_json(cluster, "/pid")

    # users moves to new processes (a redeploy starts new instances and stops the old ones):
    # web keeps its process and environment and reaches the new users.
    (users / "app.py").write_text((users / "app.py").read_text().replace("Alan", "Grace"))
    deploy(cluster, users)
    answer = web_json(cluster)
    assert answer["served_by"]["release"] == "2", answer
    assert answer["users"][1]["name"] == "Grace Turing", answer
    assert web_json(cluster, "/pid") == before

    # users is a dependency of web: deleting it is refused unless forced.
    delete = paas(cluster, "apps:delete", "users", "--yes")
    assert delete.returncode != 0 and "dependency of web" in delete.stderr, delete


def test_cycles_are_refused_with_the_cycle_named(cluster: LocalCluster, tmp_path: Path) -> None:
    web = json.loads(paas(cluster, "status", "web", "--json").stdout)
    assert web["release"] is not None, "runs after test_web_answers_with_data_from_users"
    users = copy_example(tmp_path, "users")
    (users / "paas.toml").write_text(
        '[app]\nname = "users"\nhealth_path = "/health"\ndepends_on = ["web"]\n'
    )
    refused = paas(cluster, "deploy", str(users), "--timeout", "60")
    assert refused.returncode != 0
    assert "dependency cycle: users -> web -> users" in refused.stderr, refused.stderr
    apps = {a["name"]: a for a in json.loads(paas(cluster, "apps", "--json").stdout)}
    assert apps["users"]["depends_on"] == [] and apps["web"]["depends_on"] == ["users"]
