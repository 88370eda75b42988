"""What the e2e tests share: running `paas` as a subprocess and HTTPS through the frontend."""

from __future__ import annotations

import subprocess
import sys
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
