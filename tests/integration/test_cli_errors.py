"""The `paas` program: expected errors are one line on stderr, never a traceback.

The first tests run the real installed program (entry point, interpreter start, exit
status); the rest invoke the same click group in-process (`paas_in_process`, click's
CliRunner), which checks the same stderr and exit code without starting a Python each time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main

PAAS = str(Path(sys.executable).parent / "paas")


def paas(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [PAAS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def paas_in_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`paas` run by CliRunner; an unexpected exception shows up as a traceback on stderr."""
    result = CliRunner().invoke(main, list(args), env=env)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        stderr += "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return subprocess.CompletedProcess(["paas", *args], result.exit_code, result.stdout, stderr)


def assert_one_line_error(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0]
    return lines[0]


def test_unreachable_registry(free_port: int) -> None:
    port = free_port
    url = f"http://127.0.0.1:{port}"
    done = paas("apps", env={"PAAS_REGISTRY_URL": url, "PAAS_TOKEN": "x"})
    line = assert_one_line_error(done)
    assert line == f"error: cannot reach the registry at {url}: connection refused"


def test_login_to_unreachable_registry_saves_nothing(free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}"
    done = paas("login", "--registry", url, "--token", "t")
    assert_one_line_error(done, "cannot reach the registry", "connection refused")
    assert not Path(os.environ["PAAS_CONFIG"]).exists()


def test_not_logged_in() -> None:
    done = paas("hosts")
    assert_one_line_error(done, "not logged in", "paas login")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["apps:create", "bad;name"], "invalid app name 'bad;name'"),
        (["apps:create", "ok", "--domain", "a.com;include"], "invalid domain 'a.com;include'"),
        (["releases", "Bad"], "invalid app name 'Bad'"),
        (["apps:delete", "hello"], "add --yes"),
    ],
)
def test_bad_input_is_refused_before_any_request(
    args: list[str], expected: str, free_port: int
) -> None:
    # The registry URL is a dead port: these must fail on validation, not on the network.
    env = {"PAAS_REGISTRY_URL": f"http://127.0.0.1:{free_port}", "PAAS_TOKEN": "x"}
    assert_one_line_error(paas_in_process(*args, env=env), expected)


def test_deploy_without_procfile(tmp_path: Path, free_port: int) -> None:
    (tmp_path / "app.py").write_text("print(1)\n")
    env = {"PAAS_REGISTRY_URL": f"http://127.0.0.1:{free_port}", "PAAS_TOKEN": "x"}
    done = paas_in_process("deploy", str(tmp_path), "--app", "demo", env=env)
    assert_one_line_error(done, "no Procfile")


def test_corrupt_config_file_is_one_line(tmp_path: Path) -> None:
    Path(os.environ["PAAS_CONFIG"]).write_text("{not json")
    assert_one_line_error(paas_in_process("apps"), "cannot read the CLI config")


def test_local_status_without_cluster_json(tmp_path: Path) -> None:
    done = paas_in_process("local", "status", "--state-dir", str(tmp_path / "none"), "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["processes"] == {} and body["hosts"] == []
