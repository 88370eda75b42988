"""The frontend's default certificate: self-signed ECDSA P-256, used until real ones arrive.

Generation is pure (returns PEM bytes: certificate then key, the form HAProxy's `crt`
takes); `ensure_default_cert` is the one function that touches the disk.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.fsutil import atomic_write
from common.names import check_domain

log = logging.getLogger(__name__)

VALIDITY = dt.timedelta(days=365)
LOCAL_NAMES = ("localhost", "*.localhost")


def default_cert_names(domain: str | None) -> list[str]:
    """The names the default certificate covers: *.<domain> and <domain>, plus localhost."""
    names = [f"*.{domain}", domain] if domain else []
    return [*names, *LOCAL_NAMES]


def make_self_signed(names: Sequence[str], *, now: dt.datetime) -> bytes:
    """A PEM bundle (certificate + PKCS#8 key) for `names`, valid one year from `now`."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    for name in names:
        check_domain(name)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "paas self-signed"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
        ]
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key_pem


def ensure_default_cert(state_dir: Path, domain: str | None, *, now: dt.datetime) -> Path:
    """state_dir/tls/default.pem, created (0600) on first start; kept as is afterwards."""
    path = state_dir / "tls" / "default.pem"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    names = default_cert_names(domain)
    pem = make_self_signed(names, now=now)
    atomic_write(path, pem, mode=0o600)
    log.info("created a self-signed certificate for %s in %s", ", ".join(names), path)
    return path
