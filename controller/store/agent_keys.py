"""Machine agents' API keys, kept in the database only sealed with the registry's keyring.

At join the registry derives the host's agent API key from the new host token
(common/agent_auth.py) and stores it as `ak2:<key id>:<base64(nonce + ciphertext)>`: AES-GCM
under a sub-key derived from the keyring's current key for this one purpose
(controller/store/secretbox.py `subkey`), the host name as associated data, so a sealed key
cannot be moved to another host's row. A copy of registry.db or of a backup alone cannot call
any agent; replicas share the keyring they already share for secrets at rest, and
`paas-registry rotate-key` reseals these keys too.

Registries before the one keyring sealed them (no prefix) under a separate 32-byte file,
`<state_dir>/agent-api.key`. Such a row still opens with that file, which is read when one
does and never created any more; `rotate-key` reseals those rows under the keyring, after
which the file is no longer needed.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controller.store.secretbox import Keyring, subkey

PREFIX = "ak2:"
PURPOSE = "agent-api-key"
LEGACY_KEY_FILE = "agent-api.key"


class SealError(RuntimeError):
    """A sealed key cannot be opened with this registry's keyring."""


def legacy_key_file(state_dir: Path) -> Path:
    return state_dir / LEGACY_KEY_FILE


def seal(keyring: Keyring, host: str, key: bytes) -> str:
    kid, master = keyring.current()
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(subkey(master, PURPOSE)).encrypt(nonce, key, host.encode())
    return f"{PREFIX}{kid}:{base64.b64encode(nonce + sealed).decode()}"


def sealed_with(sealed: str) -> str | None:
    """The id of the keyring key that sealed `sealed` (None: the legacy key file)."""
    return sealed[len(PREFIX) :].partition(":")[0] if sealed.startswith(PREFIX) else None


def unseal(keyring: Keyring, host: str, sealed: str, *, state_dir: Path) -> bytes:
    kid = sealed_with(sealed)
    origin: str | Path
    if kid is None:
        aead, body, origin = AESGCM(_legacy_key(state_dir)), sealed, legacy_key_file(state_dir)
    else:
        master = keyring.find(kid)
        if master is None:
            raise SealError(
                f"the agent API key of host {host} was sealed with key {kid}, which is not in"
                f" {keyring.origin}: use the registry's keyring (replicas share one) or re-join"
                " the host"
            )
        aead = AESGCM(subkey(master, PURPOSE))
        body, origin = sealed[len(PREFIX) + len(kid) + 1 :], keyring.origin
    try:
        raw = base64.b64decode(body, validate=True)
        return aead.decrypt(raw[:12], raw[12:], host.encode())
    except (InvalidTag, ValueError, binascii.Error) as exc:
        raise SealError(
            f"the agent API key of host {host} does not open with {origin}"
            " (another registry's key?); copy the key file or re-join the host"
        ) from exc


def _legacy_key(state_dir: Path) -> bytes:
    path = legacy_key_file(state_dir)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SealError(
            f"host keys sealed before the one keyring need {path}: restore it from the old"
            " registry, or re-join the hosts"
        ) from exc
    if len(data) != 32:
        raise SealError(f"{path} is not a 32-byte key; restore it or re-join the hosts")
    return data
