"""Certificates through the registry API: checks at the edge, replace on renewal, and the
routing table that carries them to the frontends (SNI limited to the app's own domains)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certgen import chain, issue
from tests.support.registry_app import TestRegistry, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path, domain="paas.test") as registry:
        yield registry


def post(reg: TestRegistry, app: str, cert_pem: str, key_pem: str):  # type: ignore[no-untyped-def]
    body = {"cert_pem": cert_pem, "key_pem": key_pem}
    return reg.client.post(f"/v1/apps/{app}/certs", json=body, headers=reg.admin)


def routing(reg: TestRegistry) -> dict:
    return reg.client.get("/v1/routing", headers=reg.admin).json()


def test_add_list_route_replace_remove(reg: TestRegistry) -> None:
    reg.create_app("shop", domains=["shop.example.com", "*.shop.example.com"])
    _, mid, leaf = chain(["shop.example.com", "*.shop.example.com", "other.org"])
    response = post(reg, "shop", leaf.cert_pem + mid.cert_pem, leaf.key_pem)
    assert response.status_code == 201, response.text
    cert = response.json()
    assert cert["covers"] == ["shop.example.com", "*.shop.example.com"]
    assert cert["source"] == "user" and "key_pem" not in cert
    listed = reg.client.get("/v1/apps/shop/certs", headers=reg.admin).json()
    assert [c["sha256"] for c in listed] == [cert["sha256"]]
    assert "PRIVATE KEY" not in str(listed)

    # Frontends get it (the app needs no active release for its certificate to travel).
    [routed] = routing(reg)["certs"]
    assert routed["sha256"] == cert["sha256"]
    assert routed["sni"] == ["shop.example.com", "*.shop.example.com"]  # never other.org
    assert routed["pem"].count("BEGIN CERTIFICATE") == 2 and "PRIVATE KEY" in routed["pem"]

    # Same bundle again: idempotent. A new certificate for the same names replaces it.
    assert post(reg, "shop", leaf.cert_pem + mid.cert_pem, leaf.key_pem).status_code == 201
    _, mid2, renewed = chain(["shop.example.com", "*.shop.example.com", "other.org"])
    second = post(reg, "shop", renewed.cert_pem + mid2.cert_pem, renewed.key_pem).json()
    listed = reg.client.get("/v1/apps/shop/certs", headers=reg.admin).json()
    assert [c["sha256"] for c in listed] == [second["sha256"]]

    # Removing a domain narrows what it is served for; removing the cert stops it.
    reg.client.delete("/v1/apps/shop/domains/shop.example.com", headers=reg.admin)
    assert routing(reg)["certs"][0]["sni"] == ["*.shop.example.com"]
    gone = reg.client.delete(f"/v1/apps/shop/certs/{second['sha256']}", headers=reg.admin)
    assert gone.status_code == 204 and routing(reg)["certs"] == []
    again = reg.client.delete(f"/v1/apps/shop/certs/{second['sha256']}", headers=reg.admin)
    assert again.status_code == 404


def test_bad_bundles_are_422_with_the_reason(reg: TestRegistry) -> None:
    reg.create_app("shop", domains=["shop.example.com"])
    _, mid, leaf = chain(["shop.example.com"])
    stranger = issue("x.org", names=["x.org"])
    cases = [
        (leaf.cert_pem, stranger.key_pem, "does not belong"),
        (mid.cert_pem + leaf.cert_pem, leaf.key_pem, "does not belong"),
        (leaf.cert_pem + stranger.cert_pem, leaf.key_pem, "not in order"),
        (stranger.cert_pem, stranger.key_pem, "covers none"),
        ("-----BEGIN CERTIFICATE-----\n;}\n-----END CERTIFICATE-----", leaf.key_pem, "PEM"),
    ]
    for cert_pem, key_pem, reason in cases:
        response = post(reg, "shop", cert_pem, key_pem)
        assert response.status_code == 422, response.text
        assert reason in response.json()["detail"]
    assert reg.client.get("/v1/apps/shop/certs", headers=reg.admin).json() == []


def test_a_certificate_belongs_to_one_app_and_goes_with_it(reg: TestRegistry) -> None:
    reg.create_app("one", domains=["a.example.com"])
    reg.create_app("two", domains=["b.example.com"])
    both = issue("a.example.com", names=["a.example.com", "b.example.com"])
    assert post(reg, "one", both.cert_pem, both.key_pem).status_code == 201
    assert post(reg, "two", both.cert_pem, both.key_pem).status_code == 409
    assert routing(reg)["certs"][0]["sni"] == ["a.example.com"]
    assert reg.client.delete("/v1/apps/one", headers=reg.admin).status_code == 204
    assert routing(reg)["certs"] == []
    assert post(reg, "two", both.cert_pem, both.key_pem).status_code == 201
