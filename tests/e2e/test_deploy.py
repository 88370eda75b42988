"""Whole system: the real `paas` CLI against a real registry, agents, nginx and HAProxy.

The tests run in file order on one session cluster: hello v1, hello v2, a crashing v3 that
must leave v2 serving, bad input, flask-hello with a real PyPI install, HTTP -> HTTPS.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from cli.local import LocalCluster
from tests.e2e.helpers import REPO, answer_now, https_get, logs, paas

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-2")]
HELLO = "hello.localhost"


def hello_copy(tmp_path: Path, name: str = "hello") -> Path:
    app = tmp_path / name
    shutil.copytree(REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__"))
    return app


def test_first_deploy_answers_over_https(cluster: LocalCluster) -> None:
    """Through the `paas` executable (the other tests run the CLI's code in-process)."""
    done = paas(cluster, "deploy", str(REPO / "examples" / "hello"), real=True)
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    out = done.stdout
    assert "created app hello" in out
    for stage in ("installing", "routed"):
        assert stage in out
    assert out.strip().splitlines()[-1] == cluster.app_url("hello")
    body = answer_now(cluster, HELLO, "Hello from hello")
    assert "release 1" in body


def test_code_change_is_served_and_listed(cluster: LocalCluster, tmp_path: Path) -> None:
    app = hello_copy(tmp_path)
    code = (app / "app.py").read_text().replace('"Hello from', '"Howdy from')
    (app / "app.py").write_text(code)
    done = paas(cluster, "deploy", str(app))
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    assert "created app" not in done.stdout
    body = answer_now(cluster, HELLO, "Howdy from hello")
    assert "release 2" in body

    listed = paas(cluster, "releases", "hello", "--json", real=True)
    assert listed.returncode == 0, listed.stderr
    releases = json.loads(listed.stdout)
    assert [r["version"] for r in releases][:2] == [2, 1]
    assert releases[0]["status"] == "active" and releases[1]["status"] == "superseded"
    table = paas(cluster, "releases", "hello")
    assert "v1" in table.stdout and "v2" in table.stdout


def test_crashing_release_fails_and_previous_keeps_serving(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    app = hello_copy(tmp_path)
    (app / "Procfile").write_text("web: python -c 'import sys; sys.exit(\"boom\")'\n")
    done = paas(cluster, "deploy", str(app), "--timeout", "180")
    assert done.returncode != 0, done.stdout + done.stderr
    assert "boom" in done.stdout + done.stderr, done.stdout + done.stderr + logs(cluster)
    assert "Traceback (most recent call last)" not in done.stderr.split("failed:")[0]
    body = answer_now(cluster, HELLO, "Howdy from hello")
    assert "release 2" in body
    releases = json.loads(paas(cluster, "releases", "hello", "--json").stdout)
    assert releases[0]["status"] == "failed" and releases[1]["status"] == "active"


def test_status_and_hosts_json_shapes(cluster: LocalCluster) -> None:
    status = json.loads(paas(cluster, "status", "hello", "--json").stdout)
    assert status["app"]["name"] == "hello" and status["app"]["active_release"] == 2
    assert status["release"]["version"] == 2
    assert any(i["state"] == "running" and i["routed"] for i in status["instances"])
    hosts = json.loads(paas(cluster, "--json", "hosts").stdout)
    assert {(h["name"], h["role"], h["state"]) for h in hosts} >= {
        ("machine-1", "machine", "up"),
        ("frontend-1", "frontend", "up"),
    }
    apps = json.loads(paas(cluster, "apps", "--json").stdout)
    assert "hello" in [a["name"] for a in apps]


def test_bad_names_are_refused_by_cli_and_registry(cluster: LocalCluster) -> None:
    done = paas(cluster, "apps:create", "bad;name")
    assert done.returncode != 0
    assert "invalid app name 'bad;name'" in done.stderr and "Traceback" not in done.stderr
    done = paas(cluster, "apps:create", "okname", "--domain", "a.com;include")
    assert done.returncode != 0
    assert "invalid domain 'a.com;include'" in done.stderr and "Traceback" not in done.stderr
    # The registry refuses them on its own too (a client that skips the CLI's checks).
    headers = {"Authorization": f"Bearer {cluster.tokens()['admin_token']}"}
    for body in ({"name": "bad;name"}, {"name": "okname", "domains": ["a.com;include"]}):
        response = httpx.post(f"{cluster.registry_url}/v1/apps", json=body, headers=headers)
        assert response.status_code == 422, response.text
    names = [a["name"] for a in json.loads(paas(cluster, "apps", "--json").stdout)]
    assert "okname" not in names


def test_bad_token_is_one_line(cluster: LocalCluster) -> None:
    env = {**cluster.env(), "PAAS_TOKEN": "not-a-token"}
    import subprocess

    from tests.e2e.helpers import PAAS

    done = subprocess.run([PAAS, "apps"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip() == "error: the registry refused the token (401); run paas login"


def test_flask_app_installs_requirements_from_pypi(cluster: LocalCluster) -> None:
    done = paas(cluster, "deploy", str(REPO / "examples" / "flask-hello"), "--timeout", "300")
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    body = answer_now(cluster, "flask-hello.localhost", "Hello from flask-hello")
    assert "release 1" in body
    # hello is untouched by a second app.
    assert "Howdy from hello" in https_get(cluster, HELLO).text


def test_http_redirects_to_https(cluster: LocalCluster) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{cluster.ports.http}/some/path",
        headers={"Host": HELLO},
        timeout=10,
    )
    assert response.status_code == 301
    assert response.headers["location"].startswith(f"https://{HELLO}")
