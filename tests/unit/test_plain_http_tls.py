"""`no_tls()`: the context of clients that speak only plain http:// is cheap and trusts
nothing, so an https:// URL sent through one is refused, never trusted."""

from __future__ import annotations

import ssl

from common.registry_tls import no_tls


def test_no_tls_verifies_against_no_ca() -> None:
    context = no_tls()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0 and context.get_ca_certs() == []
