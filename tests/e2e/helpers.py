"""What the e2e tests share: running `paas` as a subprocess and HTTPS through the frontend."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from cli.local import LocalCluster

REPO = Path(__file__).resolve().parents[2]
PAAS = str(Path(sys.executable).parent / "paas")


def paas(
    cluster: LocalCluster, *args: str, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PAAS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cluster.env(),
        cwd=cwd,
    )


def https_get(cluster: LocalCluster, host: str, path: str = "/") -> httpx.Response:
    """Through HAProxy on 127.0.0.1 with SNI and Host set as a browser would."""
    with httpx.Client(verify=False, timeout=10) as client:
        return client.get(
            f"https://127.0.0.1:{cluster.ports.https}{path}",
            headers={"Host": host},
            extensions={"sni_hostname": host},
        )


def wait_for_text(cluster: LocalCluster, host: str, text: str, *, within: float = 10.0) -> str:
    """The body once it contains `text`; fails with the last answer seen after `within` s."""
    deadline = time.monotonic() + within
    last = ""
    while True:
        try:
            response = https_get(cluster, host)
            last = f"{response.status_code} {response.text!r}"
            if response.status_code == 200 and text in response.text:
                return response.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"{host} never answered with {text!r}; last: {last}")
        time.sleep(0.2)


def logs(cluster: LocalCluster) -> str:
    """Tails of every component log, for assertion messages."""
    parts = []
    for log in sorted(cluster.logs_dir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-25:]
        parts.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(parts)
