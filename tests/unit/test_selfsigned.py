"""common/selfsigned: the one maker of the registry's and the frontend's self-signed
certificates (a P-256 server leaf, not a CA, valid from just before `now`)."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.selfsigned import make_self_signed

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_a_server_leaf_for_the_names_and_addresses_given() -> None:
    cert_pem, key_pem = make_self_signed(
        common_name="paas-registry box",
        dns_names=["box", "localhost"],
        ip_addresses=[ipaddress.ip_address("198.18.0.5")],
        now=NOW,
        valid_for=dt.timedelta(days=10),
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.public_key() == load_pem_private_key(key_pem, password=None).public_key()
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "paas-registry box"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["box", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.5")]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_before_utc < NOW < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=10)


def test_no_name_is_refused() -> None:
    with pytest.raises(ValueError):
        make_self_signed(common_name="x", dns_names=[], now=NOW, valid_for=dt.timedelta(days=1))
