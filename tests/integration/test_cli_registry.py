"""The real `paas` CLI against a real `paas-registry serve` (no agents): login, apps, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.local import kill_tree
from common.registry_tls import no_tls

BIN = Path(sys.executable).parent


def paas(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "paas"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def registry(tmp_path: Path, free_port: int) -> Iterator[tuple[str, str]]:
    """(url, admin token) of a registry subprocess; killed by pid afterwards."""
    state = tmp_path / "registry"
    tokens = tmp_path / "tokens.json"
    url = f"http://127.0.0.1:{free_port}"
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "paas-registry"), "serve", "--state-dir", str(state), "--host", "127.0.0.1",
         "--port", str(free_port), "--domain", "localhost", "--public-https-port", "8443",
         "--init-tokens", str(tokens)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=1, verify=no_tls()).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "registry.log").read_text()
            assert time.monotonic() < deadline, "registry did not start"
            time.sleep(0.1)
        yield url, json.loads(tokens.read_text())["admin_token"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait(timeout=10)
        log.close()


def test_login_checks_the_token_then_saves_it(registry: tuple[str, str]) -> None:
    url, token = registry
    bad = paas("login", "--registry", url, "--token", "wrong")
    assert bad.returncode != 0
    assert bad.stderr.strip() == "error: the registry refused the token (401); run paas login"
    config = Path(os.environ["PAAS_CONFIG"])
    assert not config.exists()
    good = paas("login", "--registry", url, "--token", token)
    assert good.returncode == 0, good.stderr
    assert config.stat().st_mode & 0o777 == 0o600
    assert json.loads(config.read_text()) == {"registry_url": url, "token": token}
    assert paas("apps").returncode == 0  # the saved login is used


def test_apps_lifecycle_and_json_shapes(registry: tuple[str, str]) -> None:
    url, token = registry
    env = {"PAAS_REGISTRY_URL": url, "PAAS_TOKEN": token}
    created = paas("apps:create", "demo", "--domain", "demo.example.com", "--json", env=env)
    assert created.returncode == 0, created.stderr
    app = json.loads(created.stdout)
    assert app["name"] == "demo" and app["domains"] == ["demo.example.com"]
    assert app["urls"][0] == "https://demo.localhost:8443/"

    again = paas("apps:create", "demo", env=env)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert again.stderr.strip().endswith("(409)")

    listed = json.loads(paas("--json", "apps", env=env).stdout)
    assert [a["name"] for a in listed] == ["demo"]
    assert json.loads(paas("releases", "demo", "--json", env=env).stdout) == []
    status = json.loads(paas("status", "--json", env=env).stdout)
    assert set(status) == {"apps", "hosts"} and status["hosts"] == []

    missing = paas("releases", "nope", env=env)
    assert missing.returncode != 0 and missing.stderr.strip().endswith("(404)")
    assert len(missing.stderr.strip().splitlines()) == 1

    deleted = paas("apps:delete", "demo", "--yes", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(paas("apps", "--json", env=env).stdout) == []


def test_deploy_with_no_machine_fails_with_the_reason(
    registry: tuple[str, str], tmp_path: Path
) -> None:
    url, token = registry
    env = {"PAAS_REGISTRY_URL": url, "PAAS_TOKEN": token}
    repo = Path(__file__).resolve().parents[2]
    done = paas("deploy", str(repo / "examples" / "hello"), "--timeout", "20", env=env)
    assert done.returncode != 0
    assert "created app hello" in done.stdout
    assert done.stderr.startswith("failed: release v1 of hello: ")
    assert "Traceback" not in done.stderr
