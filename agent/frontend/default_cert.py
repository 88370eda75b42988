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

from common import selfsigned
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
    cert_pem, key_pem = selfsigned.make_self_signed(
        common_name=names[0],
        organization="paas self-signed",
        dns_names=names,
        ip_addresses=[ipaddress.ip_address("127.0.0.1")],
        now=now,
        valid_for=VALIDITY,
    )
    return cert_pem + key_pem


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
