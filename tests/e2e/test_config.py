"""`paas config*`: awkward values reach the process byte for byte, every change is a release,
rollback restores the previous config, and secrets never show in clear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.local import LocalCluster
from tests.e2e.helpers import https_get, logs, paas

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-2")]
APP = "envecho"
HOST = f"{APP}.localhost"
SECRET = "s3cret-Value-9f27"

# Answers the variables starting with T_, the built-ins and a secret as JSON.
ENV_APP = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHOWN = ("PORT", "PAAS_APP", "PAAS_RELEASE", "PAAS_HOST", "PAAS_URL", "DB_PASSWORD")

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        env = {k: v for k, v in os.environ.items() if k.startswith("T_") or k in SHOWN}
        body = json.dumps(env).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

AWKWARD = {
    "T_SPACES": "  two  spaces  ",
    "T_QUOTES": 'he said "hi" and it\'s ok; `x` $HOME \\n',
    "T_EQUALS": "a=b==c=",
    "T_UNICODE": "héllo ☃ 日本語 🚀",
    "T_NEWLINE": "line one\nline two\n",
    "T_EMPTY": "",
}


def run(cluster: LocalCluster, *args: str) -> str:
    done = paas(cluster, *args)
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    return done.stdout


def env_now(cluster: LocalCluster) -> dict[str, str]:
    response = https_get(cluster, HOST)
    assert response.status_code == 200, response.text + logs(cluster)
    return json.loads(response.text)


def test_config_changes_are_releases_and_secrets_stay_hidden(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    app = tmp_path / APP
    app.mkdir()
    (app / "app.py").write_text(ENV_APP)
    (app / "Procfile").write_text("web: python app.py\n")
    # No health window: every config change is a release, and none should wait one out.
    (app / "paas.toml").write_text(f'[app]\nname = "{APP}"\nmin_healthy_s = 0\n')
    run(cluster, "deploy", str(app), "--timeout", "120")
    first = env_now(cluster)
    assert first["PAAS_APP"] == APP and first["PAAS_RELEASE"] == "1"
    assert first["PAAS_HOST"] == "machine-1" and first["PORT"].isdigit()
    assert first["PAAS_URL"].startswith(f"https://{HOST}:")

    # --plan shows the diff (secret redacted) and changes nothing.
    plan = run(cluster, "config:set", APP, f"DB_PASSWORD={SECRET}", "T_EQUALS=x", "--plan")
    assert "+ DB_PASSWORD=********" in plan and "+ T_EQUALS='x'" in plan, plan
    assert SECRET not in plan
    assert len(json.loads(run(cluster, "releases", APP, "--json"))) == 1

    pairs = [f"{k}={v}" for k, v in AWKWARD.items()]
    out = run(cluster, "config:set", APP, *pairs, f"DB_PASSWORD={SECRET}", "--timeout", "120")
    assert "release v2 of envecho: config: set" in out and "routed" in out, out
    env = env_now(cluster)
    for key, value in AWKWARD.items():
        assert env[key] == value, (key, env.get(key))
    assert env["DB_PASSWORD"] == SECRET and env["PAAS_RELEASE"] == "2"

    # Redacted everywhere unless revealed.
    listing = run(cluster, "config", APP)
    assert "DB_PASSWORD='********'  (secret)" in listing and SECRET not in listing
    assert SECRET not in run(cluster, "releases", APP, "--json")
    assert SECRET not in run(cluster, "config", APP, "--json")
    assert run(cluster, "config:get", APP, "DB_PASSWORD") == "********\n"
    assert run(cluster, "config:get", APP, "DB_PASSWORD", "--reveal") == SECRET + "\n"
    assert run(cluster, "config:get", APP, "T_NEWLINE") == AWKWARD["T_NEWLINE"] + "\n"
    for log in cluster.logs_dir.glob("*.log"):
        assert SECRET not in log.read_text(errors="replace"), log

    run(cluster, "config:unset", APP, "T_SPACES", "--timeout", "120")
    assert "T_SPACES" not in env_now(cluster)

    # Rollback restores code and config together: the config of release 1 had no T_ vars.
    out = run(cluster, "rollback", APP, "1", "--timeout", "120")
    assert "rollback to v1" in out, out
    env = env_now(cluster)
    assert not [k for k in env if k.startswith("T_")] and "DB_PASSWORD" not in env, env
    releases = json.loads(run(cluster, "releases", APP, "--json"))
    assert [r["version"] for r in releases] == [4, 3, 2, 1]
    assert releases[2]["config"]["DB_PASSWORD"] == "********"
    assert run(cluster, "config", APP, "--json").count("T_") == 0

    bad = paas(cluster, "config:set", APP, "lower=1")
    assert bad.returncode != 0 and "invalid config key" in bad.stderr, bad.stderr
