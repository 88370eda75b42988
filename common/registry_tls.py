"""How the agents and the CLI trust the registry on the wire: the one place that decides.

- `http://` is allowed only to a loopback registry (127.0.0.0/8, ::1, localhost): anywhere
  else bearer tokens, secret config values and private keys would cross the network in clear.
- `https://` needs a trust anchor, never trust on first use: a CA file (`registry_ca`, the
  normal chain and host name checks) or the SHA-256 fingerprint(s) of the registry's leaf
  certificate (`registry_fingerprint`, `sha256:<hex>`, comma-separated for several replicas).
- A pin is checked on every connection, inside the TLS handshake call itself (the context's
  own `SSLSocket` / `SSLObject` subclasses, used by both the sync and the async httpx stack),
  so a connection to another certificate fails before a single request byte (a token) is sent.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


class RegistryTrustError(ValueError):
    """A registry URL or trust setting that would let tokens travel unprotected."""


class PinMismatch(ssl.SSLCertVerificationError):
    """The registry presented a certificate whose fingerprint is not pinned."""

    def __init__(self, message: str) -> None:
        super().__init__(ssl.SSL_ERROR_SSL, message)  # (errno, strerror): str() is the message


def fingerprint_of(der: bytes) -> str:
    """`sha256:<64 hex>` of a DER certificate (what `paas-registry fingerprint` prints)."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def parse_pins(value: str | None) -> tuple[str, ...]:
    """`"sha256:AB:CD..., sha256:ef01..."` -> normalised pins; openssl's colon form is accepted."""
    if not value:
        return ()
    pins: list[str] = []
    for part in value.split(","):
        text = part.strip()
        if not text:
            continue
        algo, sep, digest = text.partition(":")
        if not sep or algo.lower() != "sha256":
            raise RegistryTrustError(f"registry fingerprint {text!r} must look like sha256:<hex>")
        digest = digest.replace(":", "").lower()
        if not _HEX_RE.fullmatch(digest):
            raise RegistryTrustError(
                f"registry fingerprint {text!r} must hold 64 hex digits after sha256:"
            )
        if f"sha256:{digest}" not in pins:
            pins.append(f"sha256:{digest}")
    return tuple(pins)


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RegistryTrust:
    """What an https:// registry must prove: a chain to `ca_file`, or one of `pins`."""

    ca_file: Path | None = None
    pins: tuple[str, ...] = ()

    @classmethod
    def of(cls, *, ca_file: Path | str | None, fingerprint: str | None) -> RegistryTrust:
        ca = Path(ca_file) if ca_file else None
        if ca is not None and not ca.is_file():
            raise RegistryTrustError(f"registry CA file {ca} does not exist")
        return cls(ca_file=ca, pins=parse_pins(fingerprint))

    @property
    def anchored(self) -> bool:
        return self.ca_file is not None or bool(self.pins)

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the CA chain and name (with a CA file) and/or the pinned leaf."""
        if self.ca_file is not None:
            context = ssl.create_default_context(cafile=str(self.ca_file))
        else:  # pinned only: a self-signed certificate, judged by its fingerprint alone
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.pins:
            _pin(context, self.pins)
        return context


def check_urls(urls: list[str], trust: RegistryTrust, *, insecure_http: bool = False) -> None:
    """Refuse http:// off loopback (unless the explicit opt-in) and https:// without anchor."""
    for url in urls:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme == "http" and not is_loopback_host(host) and not insecure_http:
            raise RegistryTrustError(
                f"refusing plain http:// to the registry at {host}: tokens and secrets would"
                " cross the network in clear; use https:// with the registry's fingerprint"
                " (paas-registry fingerprint) or a CA file"
            )
        if parts.scheme == "https" and not trust.anchored:
            raise RegistryTrustError(
                f"cannot verify the registry at {url}: give its certificate fingerprint"
                " (sha256:..., printed by `paas-registry fingerprint`) or a CA file"
            )


# httpx's defaults, but idle connections are dropped after 2 s: well before the registry's
# keep-alive timeout (5 s by default) closes them from its side, which races a request sent
# on one at that moment (common/failover.py sends such a request again).
POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)


def no_tls() -> ssl.SSLContext:
    """The TLS context of a client that speaks only plain http:// (a loopback registry, an
    app's health check). httpx builds a context for every client up front, and its default
    one loads every CA certificate of certifi: about 20 ms of CPU per client. This one trusts
    no CA, so an https:// URL reached through it fails verification instead of being trusted."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def sync_transport(
    urls: list[str], trust: RegistryTrust, *, insecure_http: bool = False
) -> httpx.HTTPTransport:
    """The transport every sync registry client uses (cli/): checked URLs, verified TLS."""
    check_urls(urls, trust, insecure_http=insecure_http)
    verify = trust.ssl_context() if trust.anchored else no_tls()  # unanchored: http:// only
    return httpx.HTTPTransport(verify=verify, limits=POOL_LIMITS)


def async_transport(
    urls: list[str], trust: RegistryTrust, *, insecure_http: bool = False
) -> httpx.AsyncHTTPTransport:
    """The same for the agents' async client."""
    check_urls(urls, trust, insecure_http=insecure_http)
    verify = trust.ssl_context() if trust.anchored else no_tls()
    return httpx.AsyncHTTPTransport(verify=verify, limits=POOL_LIMITS)


def _check_peer(der: bytes | None, pins: tuple[str, ...]) -> None:
    if der is None:
        raise PinMismatch("the registry presented no certificate")
    seen = fingerprint_of(der)
    if seen not in pins:
        raise PinMismatch(
            f"the registry's certificate is {seen}, not the pinned {', '.join(pins)}"
            " (another server answers at that address, or the registry's certificate changed)"
        )


def _pin(context: ssl.SSLContext, pins: tuple[str, ...]) -> None:
    """Check the leaf at the end of every handshake: blocking sockets (httpx sync) go through
    `sslsocket_class`, memory-BIO objects (anyio, httpx async) through `sslobject_class`."""

    class PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            _check_peer(self.getpeercert(binary_form=True), pins)

    class PinnedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()  # raises SSLWantReadError until the handshake is done
            _check_peer(self.getpeercert(binary_form=True), pins)

    context.sslsocket_class = PinnedSocket
    context.sslobject_class = PinnedObject
