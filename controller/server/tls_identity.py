"""The registry's own TLS certificate: from files, else made once and kept in its state folder.

A registry listening off loopback speaks HTTPS (tokens, secret config values and private keys
cross that connection). Without `tls_cert`/`tls_key` the first start makes a self-signed
ECDSA P-256 certificate in `<state_dir>/tls/` (key 0600); agents and the CLI pin its SHA-256
fingerprint, which `paas-registry init --json`, `paas-registry fingerprint` and `serve` print.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common import selfsigned
from common.fsutil import atomic_write
from common.registry_tls import fingerprint_of, is_loopback_host

VALID_DAYS = 3650


class TlsIdentityError(Exception):
    """The configured certificate or key cannot be used."""


@dataclass(frozen=True)
class TlsIdentity:
    cert_file: Path
    key_file: Path
    fingerprint: str
    generated: bool


def needs_tls(bind_host: str) -> bool:
    """Plain HTTP is for loopback only (tests, `paas local`); anything else gets TLS."""
    return not is_loopback_host(bind_host)


def load_or_create(
    state_dir: Path,
    *,
    cert_file: Path | None,
    key_file: Path | None,
    names: list[str] | None = None,
) -> TlsIdentity:
    """The configured pair (both or neither), else `<state_dir>/tls/registry.{crt,key}`,
    made on first use. Never overwrites an existing pair: a new certificate breaks the pins."""
    if (cert_file is None) != (key_file is None):
        raise TlsIdentityError("give both tls_cert and tls_key, or neither")
    if cert_file is not None and key_file is not None:
        return TlsIdentity(cert_file, key_file, _fingerprint(cert_file), generated=False)
    folder = state_dir / "tls"
    cert, key = folder / "registry.crt", folder / "registry.key"
    if cert.is_file() and key.is_file():
        return TlsIdentity(cert, key, _fingerprint(cert), generated=False)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_pem, key_pem = _self_signed(names or [])
    atomic_write(key, key_pem, mode=0o600)
    atomic_write(cert, cert_pem, mode=0o644)
    return TlsIdentity(cert, key, _fingerprint(cert), generated=True)


def _fingerprint(cert_file: Path) -> str:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsIdentityError(f"cannot read the registry certificate {cert_file}: {exc}") from exc
    return fingerprint_of(cert.public_bytes(serialization.Encoding.DER))


def _self_signed(names: list[str]) -> tuple[bytes, bytes]:
    """This host's name and localhost, plus the configured names and addresses."""
    hostname = socket.gethostname()
    dns_names = [hostname, "localhost"]
    addresses: list[selfsigned.IPAddress] = []
    for name in names:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            if name and name not in dns_names:
                dns_names.append(name)
            continue
        if not address.is_unspecified:
            addresses.append(address)
    return selfsigned.make_self_signed(
        common_name=f"paas-registry {hostname}",
        dns_names=dns_names,
        ip_addresses=addresses,
        now=datetime.datetime.now(datetime.UTC),
        valid_for=datetime.timedelta(days=VALID_DAYS),
    )
