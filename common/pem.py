"""Checks of a user's certificate bundle before the registry stores it.

A bundle is a PEM certificate chain (leaf first, then each issuer in order) and a PEM
private key. It is accepted only when everything parses, the key belongs to the leaf, each
certificate is signed by the next one, the leaf is valid now (and not for less than a day
more), and the leaf covers at least one of the given domains. Pure: `now` is passed in.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from common.names import InvalidName, check_domain

MAX_PEM_BYTES = 64 * 1024
MAX_CHAIN = 8
_CERT_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----"
)
_KEY_BLOCK = re.compile(
    r"-----BEGIN (?:EC |RSA )?PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]+"
    r"-----END (?:EC |RSA )?PRIVATE KEY-----"
)


class BadCertificate(ValueError):
    """The bundle is refused; the message says why in words a user can act on."""


@dataclass(frozen=True)
class CheckedBundle:
    chain_pem: str  # the certificates, normalized, leaf first, each ending with a newline
    key_pem: str  # the key, PKCS#8, unencrypted
    names: tuple[str, ...]  # DNS names of the leaf (its SANs), lowercase
    covers: tuple[str, ...]  # the given domains the leaf is valid for
    not_after: dt.datetime
    sha256: str  # of the leaf, DER

    @property
    def haproxy_pem(self) -> str:
        """What HAProxy loads: the chain, then the key."""
        return self.chain_pem + self.key_pem


def name_covers(pattern: str, domain: str) -> bool:
    """Does a certificate name (possibly `*.x`) cover `domain` (possibly `*.x` too)?"""
    if pattern == domain:
        return True
    if pattern.startswith("*."):
        head, _, rest = domain.partition(".")
        return bool(rest) and rest == pattern[2:] and head != "*" and "*" not in rest
    return False


def check_bundle(
    cert_pem: str, key_pem: str, *, domains: Sequence[str], now: dt.datetime
) -> CheckedBundle:
    if len(cert_pem.encode()) > MAX_PEM_BYTES or len(key_pem.encode()) > MAX_PEM_BYTES:
        raise BadCertificate(f"certificate or key is larger than {MAX_PEM_BYTES} bytes")
    blocks = _CERT_BLOCK.findall(cert_pem)
    if not blocks:
        raise BadCertificate("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")
    if len(blocks) > MAX_CHAIN:
        raise BadCertificate(f"the chain has more than {MAX_CHAIN} certificates")
    try:
        chain = [x509.load_pem_x509_certificate(block.encode()) for block in blocks]
    except ValueError as exc:
        raise BadCertificate(f"a certificate does not parse: {exc}") from exc
    keys = _KEY_BLOCK.findall(key_pem)
    if len(keys) != 1:
        raise BadCertificate("expected exactly one unencrypted PEM private key")
    try:
        key = serialization.load_pem_private_key(keys[0].encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadCertificate(f"the private key does not parse: {exc}") from exc
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != leaf.public_key().public_bytes(serialization.Encoding.DER, public):
        raise BadCertificate("the private key does not belong to the first certificate")
    for child, parent in itertools.pairwise(chain):
        _check_signed_by(child, parent)
    if leaf.not_valid_before_utc > now:
        raise BadCertificate(f"the certificate is not valid before {leaf.not_valid_before_utc}")
    if leaf.not_valid_after_utc <= now + dt.timedelta(days=1):
        raise BadCertificate(
            f"the certificate expired or expires within a day ({leaf.not_valid_after_utc})"
        )
    names = _dns_names(leaf)
    covers = tuple(d for d in domains if any(name_covers(n, d) for n in names))
    if not covers:
        raise BadCertificate(
            f"the certificate is for {', '.join(names) or 'no DNS name'}, which covers none of"
            f" the app's domains ({', '.join(domains) or 'none: add a domain first'})"
        )
    pem = serialization.Encoding.PEM
    return CheckedBundle(
        chain_pem="".join(c.public_bytes(pem).decode() for c in chain),
        key_pem=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        names=names,
        covers=covers,
        not_after=leaf.not_valid_after_utc,
        sha256=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def _check_signed_by(child: x509.Certificate, parent: x509.Certificate) -> None:
    order = "the chain is not in order (leaf first, then each issuer)"
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise BadCertificate(f"{order}: {_cn(child)} is not signed by {_cn(parent)}") from exc


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        raw = sans.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        raw = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names: list[str] = []
    for value in raw:
        try:
            names.append(check_domain(str(value).lower()))
        except InvalidName:
            continue  # a name we could never route is simply not used
    return tuple(names)


def _cn(cert: x509.Certificate) -> str:
    found = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return repr(found[0].value) if found else repr(cert.subject.rfc4514_string())
