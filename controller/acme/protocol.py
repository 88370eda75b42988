"""What the registry and the ACME client exchange: the challenges to publish, the issued pair,
the one error, a new key.

Apart from controller/acme/client.py, which loads certbot's `acme` library and requests (a
fifth of a registry's start): only a registry that orders a certificate needs those.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class AcmeFailed(RuntimeError):
    """Issuance failed; the message says at which step and why."""


@dataclass(frozen=True)
class Challenge:
    domain: str
    token: str
    key_authorization: str


@dataclass(frozen=True)
class Issued:
    fullchain_pem: str  # leaf first, then the issuers the CA sent
    key_pem: str  # PKCS#8, unencrypted


def new_key_pem() -> str:
    """An ECDSA P-256 key, PKCS#8 PEM: the account's (ES256) and each certificate's."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
