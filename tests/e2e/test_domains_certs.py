"""Acceptance: `paas domains:add` and `paas certs:add` on the shared local cluster, then
`curl --resolve` on the added domain over HTTPS gets the app with the user's certificate
(verified against the user's CA only); a wildcard domain routes too."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cli.local import LocalCluster
from tests.e2e.helpers import REPO, logs, paas
from tests.support.certgen import chain

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-2")]
APP = "shopfront"
DOMAIN = "shop.example.test"


def run(cluster: LocalCluster, *args: str) -> str:
    done = paas(cluster, *args)
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    return done.stdout


def curl(cluster: LocalCluster, host: str, ca: Path) -> subprocess.CompletedProcess[str]:
    port = cluster.ports.https
    return subprocess.run(
        [
            "curl", "--silent", "--show-error", "--max-time", "10",
            "--cacert", str(ca),
            "--resolve", f"{host}:{port}:127.0.0.1",
            f"https://{host}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )  # fmt: skip


def eventually_ok(cluster: LocalCluster, host: str, ca: Path) -> str:
    """Domains and certificates reach the frontends through the routing watch: wait for it."""
    deadline = time.monotonic() + 30
    while True:
        done = curl(cluster, host, ca)
        if done.returncode == 0 and "Hello from" in done.stdout:
            return done.stdout
        assert time.monotonic() < deadline, done.stdout + done.stderr + logs(cluster)
        time.sleep(0.3)


def test_added_domain_over_https_with_the_users_certificate(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    app = tmp_path / APP
    shutil.copytree(REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__"))
    run(cluster, "deploy", str(app), "--app", APP, "--timeout", "180")

    assert f"added {DOMAIN} to {APP}" in run(cluster, "domains:add", APP, DOMAIN)
    run(cluster, "domains:add", APP, f"*.{DOMAIN}")
    listed = run(cluster, "domains", APP)
    assert f"https://{DOMAIN}" in listed and f"https://*.{DOMAIN}" in listed

    root, mid, leaf = chain([DOMAIN, f"*.{DOMAIN}"])
    (tmp_path / "cert.pem").write_text(leaf.cert_pem + mid.cert_pem)
    (tmp_path / "key.pem").write_text(leaf.key_pem)
    (tmp_path / "ca.pem").write_text(root.cert_pem)
    out = run(
        cluster,
        "certs:add",
        APP,
        "--cert",
        str(tmp_path / "cert.pem"),
        "--key",
        str(tmp_path / "key.pem"),
    )
    assert f"served for {DOMAIN}, *.{DOMAIN}" in out

    # curl trusts only the user's CA: success proves the user's certificate was served.
    assert APP in eventually_ok(cluster, DOMAIN, tmp_path / "ca.pem")
    assert APP in eventually_ok(cluster, f"api.{DOMAIN}", tmp_path / "ca.pem")
    certs = json.loads(run(cluster, "certs", APP, "--json"))
    assert [c["covers"] for c in certs] == [[DOMAIN, f"*.{DOMAIN}"]]

    # A domain under the cluster domain, or another app's domain, is refused with a reason.
    taken = paas(cluster, "domains:add", APP, f"hello.{cluster.domain}")
    assert taken.returncode != 0 and "reserved" in taken.stderr

    run(cluster, "domains:remove", APP, f"*.{DOMAIN}")
    deadline = time.monotonic() + 30
    while curl(cluster, f"api.{DOMAIN}", tmp_path / "ca.pem").returncode == 0:
        assert time.monotonic() < deadline, logs(cluster)
        time.sleep(0.3)
    run(cluster, "apps:delete", APP, "--yes")
