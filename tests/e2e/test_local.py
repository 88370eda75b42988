"""`paas local up|status|down` as a user runs them, on free ports and a tmp state dir."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cli.local import LocalCluster, _alive, kill_tree
from tests.conftest import free_ports, short_dir
from tests.e2e.helpers import PAAS, REPO, answer_now

pytestmark = pytest.mark.e2e


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PAAS, *args], capture_output=True, text=True, timeout=200)


def test_local_up_deploys_says_already_running_and_down_stops_everything() -> None:
    with short_dir("paas-local-") as base:
        check_local_up_and_down(base / "s")


def check_local_up_and_down(state: Path) -> None:
    registry, http, https, proxy = free_ports(4)
    args = [
        "--state-dir", str(state),
        "--registry-port", str(registry),
        "--http-port", str(http),
        "--https-port", str(https),
        "--proxy-port", str(proxy),
    ]  # fmt: skip
    try:
        hello = str(REPO / "examples" / "hello")
        up = run("local", "up", *args, "--app-dir", hello, "--deploy-timeout", "120")
        if up.returncode != 0:
            print((state / "logs" / "frontend-1.log").read_text(errors="replace")[-3000:])
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.strip().splitlines()[-1] == f"https://hello.localhost:{https}/"
        saved = json.loads(Path(os.environ["PAAS_CONFIG"]).read_text())
        assert saved["registry_url"] == f"http://127.0.0.1:{registry}"
        assert Path(os.environ["PAAS_CONFIG"]).stat().st_mode & 0o777 == 0o600
        cluster = LocalCluster(state)
        answer_now(cluster, "hello.localhost", "Hello from hello")

        again = run("local", "up", *args, "--no-deploy")
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout

        status = json.loads(run("local", "status", "--state-dir", str(state), "--json").stdout)
        assert all(p["alive"] for p in status["processes"].values())
        assert {h["state"] for h in status["hosts"]} == {"up"}
        pids = [p["pid"] for p in status["processes"].values()]

        down = run("local", "down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr
        assert not (state / "pids.json").exists()
        assert not [pid for pid in pids if _alive(pid)]
    finally:
        for pid in LocalCluster(state).running().values():
            kill_tree(pid)


def test_port_in_use_is_named(tmp_path: Path) -> None:
    import socket

    registry, http, https, proxy = free_ports(4)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", https))
        busy.listen()
        done = run(
            "local", "up", "--state-dir", str(tmp_path / "s"),
            "--registry-port", str(registry), "--http-port", str(http),
            "--https-port", str(https), "--proxy-port", str(proxy), "--no-deploy",
        )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip() == f"error: port {https} (https) on 127.0.0.1 is already in use"
