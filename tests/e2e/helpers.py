"""What the e2e tests share: running `paas` against a cluster and HTTPS through the frontend.

`paas(...)` runs the CLI's own code in this process (click's test runner: same commands,
client, output and exit code as the `paas` executable, without starting Python for every
call, which costs about half a CPU-second each). `real=True`, PAAS_TEST_CLI=subprocess for a
whole run, and the tests that start `PAAS` with subprocess themselves run the executable.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import httpx
from click.testing import CliRunner

from cli.local import LocalCluster
from cli.main import main as cli_main

REPO = Path(__file__).resolve().parents[2]
PAAS = str(Path(sys.executable).parent / "paas")
IN_PROCESS = os.environ.get("PAAS_TEST_CLI", "in-process") != "subprocess"


def paas(
    cluster: LocalCluster,
    *args: str,
    timeout: float = 600,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    real: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`paas <args>` logged in to `cluster`; `env` adds to (or overrides) its environment."""
    environment = {**cluster.env(), **(env or {})}
    if real or not IN_PROCESS:
        return subprocess.run(
            [PAAS, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            cwd=cwd,
        )
    with _working_dir(cwd):
        result = CliRunner().invoke(cli_main, list(args), env=environment)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))  # as Python would
    return subprocess.CompletedProcess([PAAS, *args], result.exit_code, result.stdout, stderr)


@contextlib.contextmanager
def _working_dir(folder: Path | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def https_get(cluster: LocalCluster, host: str, path: str = "/") -> httpx.Response:
    """Through HAProxy on 127.0.0.1 with SNI and Host set as a browser would."""
    with httpx.Client(verify=False, timeout=10) as client:
        return client.get(
            f"https://127.0.0.1:{cluster.ports.https}{path}",
            headers={"Host": host},
            extensions={"sni_hostname": host},
        )


def answer_now(cluster: LocalCluster, host: str, text: str) -> str:
    """One request, right after `paas deploy` returned: "routed" promises the app serves."""
    response = https_get(cluster, host)
    assert response.status_code == 200 and text in response.text, (
        f"{host} answered {response.status_code} {response.text!r}, expected {text!r}\n"
        + logs(cluster)
    )
    return response.text


def logs(cluster: LocalCluster) -> str:
    """Tails of every component log, for assertion messages."""
    parts = []
    for log in sorted(cluster.logs_dir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-25:]
        parts.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(parts)


def log_marks(cluster: LocalCluster) -> dict[str, int]:
    """Where each component log ends now, for `logged_since`."""
    return {log.stem: log.stat().st_size for log in cluster.logs_dir.glob("*.log")}


def logged_since(cluster: LocalCluster, name: str, marks: dict[str, int]) -> str:
    """What component `name` logged after `marks` were taken."""
    with cluster.log_path(name).open("rb") as log:
        log.seek(marks.get(name, 0))
        return log.read().decode(errors="replace")
