"""User certificate bundles: what is accepted and every reason one is refused."""

from __future__ import annotations

import datetime as dt

import pytest

from common.pem import BadCertificate, check_bundle, name_covers
from tests.support.certgen import NOW, chain, issue

DOMAINS = ["shop.paas.test", "shop.example.com", "*.shop.example.com"]


def test_a_good_chain_is_accepted_and_normalized() -> None:
    _, mid, leaf = chain(["shop.example.com", "*.shop.example.com"])
    bundle = check_bundle(leaf.cert_pem + mid.cert_pem, leaf.key_pem, domains=DOMAINS, now=NOW)
    assert bundle.names == ("shop.example.com", "*.shop.example.com")
    assert bundle.covers == ("shop.example.com", "*.shop.example.com")
    assert bundle.chain_pem.count("BEGIN CERTIFICATE") == 2
    assert bundle.haproxy_pem.endswith("-----END PRIVATE KEY-----\n")
    assert len(bundle.sha256) == 64


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda m, leaf, other: ("garbage", leaf.key_pem), "no PEM certificate"),
        (lambda m, leaf, other: (leaf.cert_pem, "garbage"), "exactly one unencrypted"),
        (lambda m, leaf, other: (leaf.cert_pem, other.key_pem), "does not belong"),
        (lambda m, leaf, other: (m.cert_pem + leaf.cert_pem, leaf.key_pem), "does not belong"),
        (lambda m, leaf, other: (leaf.cert_pem + other.cert_pem, leaf.key_pem), "not in order"),
        (
            lambda m, leaf, other: (
                leaf.cert_pem.replace("\n-----END", "A\n-----END"),
                leaf.key_pem,
            ),
            "certificate",
        ),
    ],
)
def test_broken_bundles_are_refused(make, reason: str) -> None:  # type: ignore[no-untyped-def]
    _, mid, leaf = chain(["shop.example.com"])
    other = issue("other.example.com", names=["other.example.com"])
    cert_pem, key_pem = make(mid, leaf, other)
    with pytest.raises(BadCertificate, match=reason):
        check_bundle(cert_pem, key_pem, domains=DOMAINS, now=NOW)


def test_expired_not_yet_valid_and_uncovering_are_refused() -> None:
    old = issue(
        "shop.example.com",
        names=["shop.example.com"],
        not_before=NOW - dt.timedelta(days=9),
        not_after=NOW - dt.timedelta(days=1),
    )
    with pytest.raises(BadCertificate, match="expire"):
        check_bundle(old.cert_pem, old.key_pem, domains=DOMAINS, now=NOW)
    future = issue(
        "shop.example.com", names=["shop.example.com"], not_before=NOW + dt.timedelta(days=1)
    )
    with pytest.raises(BadCertificate, match="not valid before"):
        check_bundle(future.cert_pem, future.key_pem, domains=DOMAINS, now=NOW)
    elsewhere = issue("other.org", names=["other.org", "*.example.com"])
    with pytest.raises(BadCertificate, match="covers none of the app's domains"):
        check_bundle(elsewhere.cert_pem, elsewhere.key_pem, domains=["a.b.example.com"], now=NOW)


def test_wildcard_coverage_is_one_label() -> None:
    assert name_covers("*.example.com", "a.example.com")
    assert not name_covers("*.example.com", "a.b.example.com")
    assert not name_covers("*.example.com", "example.com")
    assert name_covers("*.example.com", "*.example.com")
    assert not name_covers("a.example.com", "*.example.com")
