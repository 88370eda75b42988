"""Acceptance: a certificate issued by a real ACME CA (pebble, real http-01 validation through
the frontend's HTTP port), served by SNI, renewed automatically under a request loop with no
failed request, the old certificate file removed from the frontend; then the CA goes away and
the failure is retried with back-off and shown while the last certificate keeps serving.

The cluster's registry gets the ACME settings through PAAS_ACME_* variables. The renewal
threshold is longer than pebble's validity (5 years), so every certificate is due again a
few seconds after it was issued: renewal runs over and over while the test watches.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cli.local import FRONTEND, LocalCluster, Ports
from tests.conftest import _kill_recorded, free_port_range, free_ports, short_dir
from tests.e2e.helpers import REPO, logs, paas
from tests.e2e.request_loop import RequestLoop, sent_more
from tests.support.pebble import Pebble, require_pebble, running_pebble

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-acme")]
APP = "acmeshop"
DOMAIN = "shop.acme-e2e.test"


class AcmeCluster(LocalCluster):
    """A local cluster whose registry talks to the given ACME directory."""

    acme_env: ClassVar[dict[str, str]] = {}

    def _child_env(self) -> dict[str, str]:
        return {**super()._child_env(), **self.acme_env}


@pytest.fixture(scope="module")
def acme_cluster() -> Iterator[tuple[AcmeCluster, Pebble]]:
    require_pebble()
    registry, http, https, proxy, agent_api, *pebble_ports = free_ports(9)
    with (
        short_dir("paas-acme-") as state,
        running_pebble(state / "pebble", http_port=http, ports=pebble_ports) as pebble,
    ):
        cluster = AcmeCluster(
            state / "s",
            ports=Ports(
                registry=registry, http=http, https=https, proxy=proxy, agent_api=agent_api
            ),
            service_ports=free_port_range(),
        )
        AcmeCluster.acme_env = {
            "PAAS_ACME_DIRECTORY_URL": pebble.directory_url,
            "PAAS_ACME_CA_BUNDLE": str(pebble.ca_bundle),
            "PAAS_ACME_RENEW_BEFORE_DAYS": str(365 * 10),
            "PAAS_ACME_CHECK_INTERVAL_S": "1",
            "PAAS_ACME_RETRY_MIN_S": "0.5",
            "PAAS_ACME_RETRY_MAX_S": "2",
            "PAAS_ACME_PUBLISH_TIMEOUT_S": "20",
        }
        try:
            cluster.up()
            yield cluster, pebble
        finally:
            try:
                cluster.down(timeout=20)
            finally:
                _kill_recorded(cluster)


def run(cluster: LocalCluster, *args: str) -> str:
    done = paas(cluster, *args)
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    return done.stdout


def served(cluster: LocalCluster, sni: str) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", cluster.ports.https), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def issued_by_pebble(cert: x509.Certificate) -> bool:
    return "Pebble" in cert.issuer.rfc4514_string()


def wait_for(what: str, check, cluster: LocalCluster, timeout: float = 90):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{logs(cluster)}"
        time.sleep(0.3)


def acme_status(cluster: LocalCluster) -> dict:
    [status] = json.loads(run(cluster, "certs:auto", APP, "--json"))
    return status


def frontend_cert_files(cluster: LocalCluster) -> set[str]:
    folder = cluster.state_dir / FRONTEND / "haproxy" / "conf" / "certs"
    assert folder.is_dir(), folder
    return {p.name for p in folder.glob("*.pem")}


def test_pebble_certificate_issued_renewed_and_failures_shown(
    acme_cluster: tuple[AcmeCluster, Pebble], tmp_path: Path
) -> None:
    cluster, pebble = acme_cluster
    app = tmp_path / APP
    shutil.copytree(REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__"))
    run(cluster, "deploy", str(app), "--app", APP, "--timeout", "180")
    run(cluster, "domains:add", APP, DOMAIN)

    # Refused with a reason: a wildcard, and a domain the app does not have.
    wildcard = paas(cluster, "certs:auto", APP, f"*.{DOMAIN}")
    assert wildcard.returncode != 0 and "wildcard" in wildcard.stderr
    foreign = paas(cluster, "certs:auto", APP, "other.acme-e2e.test")
    assert foreign.returncode != 0 and "domains:add" in foreign.stderr

    asked = time.monotonic()
    assert "by ACME" in run(cluster, "certs:auto", APP, DOMAIN)
    first = wait_for("the pebble certificate", lambda: _pebble_cert(cluster), cluster, timeout=120)

    print(f"certs:auto to the pebble certificate served: {time.monotonic() - asked:.1f} s")

    # curl trusts only pebble's issuing root: success proves the ACME certificate is served.
    (tmp_path / "pebble-root.pem").write_text(pebble.issuing_roots_pem())
    port = cluster.ports.https
    done = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--max-time", "10",
            "--cacert", str(tmp_path / "pebble-root.pem"),
            "--resolve", f"{DOMAIN}:{port}:127.0.0.1",
            f"https://{DOMAIN}:{port}/",
        ],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert done.returncode == 0 and APP in done.stdout, done.stderr + logs(cluster)
    listed = run(cluster, "certs", APP)
    assert "acme" in listed and DOMAIN in listed and "valid" in listed

    # Renewal (due again at once, see the module doc) under load: not one failed request,
    # a new serial afterwards, and the replaced certificate's file gone from the frontend.
    with RequestLoop(cluster, DOMAIN, expect="Hello from", pause_s=0.01) as loop:
        renewed = wait_for(
            "a renewed certificate",
            lambda: (
                (c := _pebble_cert(cluster)) is not None
                and c.serial_number != first.serial_number
                and c
            ),
            cluster,
        )
        sent_more(loop, 50)  # answered with the renewed certificate
    assert loop.sent > 50 and not loop.failures, loop.summary()
    print(f"renewal under load: {loop.summary()}")
    old_file = f"{_sha(first)}.pem"
    wait_for(
        "the old certificate file removed",
        lambda: old_file not in frontend_cert_files(cluster),
        cluster,
        timeout=30,
    )
    assert renewed.serial_number != first.serial_number
    # The frontend swapped certificates (and ACME answers) at runtime: no reload for them.
    frontend_log = cluster.log_path(FRONTEND).read_text()
    assert "certificates and ACME answers updated at runtime" in frontend_log

    # The CA goes away: attempts fail, are counted and shown, retried with back-off, and the
    # last certificate keeps serving.
    pebble.stop()
    failing = wait_for(
        "a recorded ACME failure",
        lambda: (s := acme_status(cluster))["attempts"] >= 2 and s,
        cluster,
        timeout=60,
    )
    assert failing["state"] == "valid" and failing["last_error"], failing
    assert "ACME" in failing["last_error"] or "connecting" in failing["last_error"], failing
    assert failing["next_attempt_at"] is not None
    still = served(cluster, DOMAIN)
    assert issued_by_pebble(still)
    shown = run(cluster, "certs", APP)
    assert "failed" in shown or "connect" in shown.lower(), shown

    # Deleting the certificate removes its file from the frontend too.
    run(cluster, "certs:auto:remove", APP, DOMAIN)
    current = _sha(served(cluster, DOMAIN))
    run(cluster, "certs:remove", APP, current)
    wait_for(
        "the deleted certificate file removed",
        lambda: f"{current}.pem" not in frontend_cert_files(cluster),
        cluster,
        timeout=30,
    )
    run(cluster, "apps:delete", APP, "--yes")


def _pebble_cert(cluster: LocalCluster) -> x509.Certificate | None:
    cert = served(cluster, DOMAIN)
    return cert if issued_by_pebble(cert) else None


def _sha(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
