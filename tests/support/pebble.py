"""A real local ACME CA for tests: Debian's `pebble` plus `pebble-challtestsrv` as its DNS.

Each test gets its own: free ports, a config file and a TLS certificate for pebble's own
HTTPS listener (signed by a throwaway CA, the bundle the registry is told to trust) in a temp
folder. Every name resolves to 127.0.0.1 (the DNS server answers A queries with it and no
AAAA), and pebble validates http-01 on `http_port`: the frontend's HTTP port, so the
challenge really goes through HAProxy. Both processes are stopped by pid.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.certgen import Issued, issue

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"


@dataclass(frozen=True)
class Pebble:
    directory_url: str
    ca_bundle: Path  # trusts pebble's HTTPS listener (not the certificates it issues)
    management_url: str  # https: /roots/0 and /intermediates/0 give the issuing CA
    log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop pebble and its DNS server (the processes this harness started, by pid)."""
        for proc in reversed(self.procs):
            stop(proc)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def issuing_roots_pem(self) -> str:
        """The root that signs what pebble issues (new on every pebble start)."""
        with httpx.Client(verify=self.ssl_context(), timeout=10) as client:
            return client.get(f"{self.management_url}/roots/0").text


def require_pebble() -> None:
    if not (Path(PEBBLE).exists() and Path(CHALLTESTSRV).exists()):
        pytest.skip("the pebble package is not installed (make system-packages)")


@contextlib.contextmanager
def running_pebble(folder: Path, *, http_port: int, ports: list[int]) -> Iterator[Pebble]:
    """pebble (ACME on ports[0], management on ports[1], tls-alpn on ports[2]) and its DNS
    server (ports[3]); `http_port` is where pebble fetches http-01 answers."""
    require_pebble()
    acme_port, mgmt_port, tls_port, dns_port = ports
    folder.mkdir(parents=True, exist_ok=True)
    root = issue("pebble listener test root", ca=True)
    _write_listener_cert(folder, root)
    (folder / "ca.pem").write_text(root.cert_pem)
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(folder / "listener.pem"),
            "privateKey": str(folder / "listener.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (folder / "pebble.json").write_text(json.dumps(config))
    log = folder / "pebble.log"
    env = {
        **os.environ,
        "PEBBLE_VA_NOSLEEP": "1",  # validate at once, not after a random pause
        "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce answers
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with log.open("ab") as out:
            procs.append(
                subprocess.Popen(
                    [
                        CHALLTESTSRV,
                        "-defaultIPv4",
                        "127.0.0.1",
                        "-defaultIPv6",
                        "",
                        "-dns01",
                        f"127.0.0.1:{dns_port}",
                        "-http01",
                        "",
                        "-https01",
                        "",
                        "-tlsalpn01",
                        "",
                        "-management",
                        f"127.0.0.1:{free_management_port(ports)}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            procs.append(
                subprocess.Popen(
                    [
                        PEBBLE,
                        "-config",
                        str(folder / "pebble.json"),
                        "-dnsserver",
                        f"127.0.0.1:{dns_port}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    cwd=folder,
                )
            )
        pebble = Pebble(
            directory_url=f"https://127.0.0.1:{acme_port}/dir",
            ca_bundle=folder / "ca.pem",
            management_url=f"https://127.0.0.1:{mgmt_port}",
            log=log,
            procs=procs,
        )
        _wait_ready(pebble, procs)
        yield pebble
    finally:
        for proc in reversed(procs):
            stop(proc)


def free_management_port(ports: list[int]) -> int:
    """challtestsrv insists on a management listener; one more free port."""
    from tests.conftest import free_ports

    while True:
        (port,) = free_ports(1)
        if port not in ports:
            return port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _wait_ready(pebble: Pebble, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"pebble exited at start: {pebble.log.read_text()[-2000:]}")
        try:
            with httpx.Client(verify=pebble.ssl_context(), timeout=2) as client:
                if client.get(pebble.directory_url).status_code == 200:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"pebble did not answer in 20 s: {pebble.log.read_text()[-2000:]}")


def _write_listener_cert(folder: Path, root: Issued) -> None:
    """pebble's listener is reached as https://127.0.0.1: its certificate needs that IP."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(root.key, hashes.SHA256())
    )
    (folder / "listener.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "listener.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
