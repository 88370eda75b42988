"""The self-signed default certificate: names, key type, validity, file mode, reuse."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from agent.frontend.default_cert import default_cert_names, ensure_default_cert, make_self_signed
from common.names import InvalidName

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_self_signed_names_key_and_validity() -> None:
    pem = make_self_signed(default_cert_names("paas.test"), now=NOW)
    cert = x509.load_pem_x509_certificate(pem)
    key = load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert cert.public_key() == key.public_key()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "*.paas.test",
        "paas.test",
        "localhost",
        "*.localhost",
    ]
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=365)
    assert cert.not_valid_before_utc <= NOW
    assert pem.index(b"BEGIN CERTIFICATE") < pem.index(b"BEGIN PRIVATE KEY")


def test_without_domain_covers_localhost_only() -> None:
    assert default_cert_names(None) == ["localhost", "*.localhost"]


def test_hostile_names_refused() -> None:
    with pytest.raises(InvalidName):
        make_self_signed(["a.com\nx"], now=NOW)
    with pytest.raises(ValueError):
        make_self_signed([], now=NOW)


def test_written_once_with_mode_0600(tmp_path: Path) -> None:
    path = ensure_default_cert(tmp_path, "paas.test", now=NOW)
    assert path == tmp_path / "tls" / "default.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_bytes()
    assert ensure_default_cert(tmp_path, "other.test", now=NOW) == path
    assert path.read_bytes() == first  # kept, not regenerated on every start
