"""Machine agents' API keys, kept in the database only encrypted with a key file outside it.

At join the registry derives the host's agent API key from the new host token
(common/agent_auth.py) and stores it sealed with AES-GCM under `<state_dir>/agent-api.key`
(32 random bytes, 0600, made on first use; the host name is the associated data, so a
sealed key cannot be moved to another host's row). A copy of registry.db or of a backup
alone cannot call any agent. Registry replicas sharing a PostgreSQL database need the same
key file (copy it once; see docs/operations.md).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.fsutil import atomic_write

KEY_FILE = "agent-api.key"
_lock = threading.Lock()


class SealError(RuntimeError):
    """A sealed key cannot be opened with this registry's key file."""


def key_file(state_dir: Path) -> Path:
    return state_dir / KEY_FILE


def _master_key(state_dir: Path) -> bytes:
    """Read the key file, or make it (0600 from its creation on, never replaced)."""
    path = key_file(state_dir)
    with _lock:
        if not path.exists():
            with contextlib.suppress(FileExistsError):  # another process made it first
                atomic_write(path, secrets.token_bytes(32), mode=0o600, replace=False)
        data = path.read_bytes()
    if len(data) != 32:
        raise SealError(f"{path} is not a 32-byte key; restore it or re-join the hosts")
    return data


def seal(state_dir: Path, host: str, key: bytes) -> str:
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_master_key(state_dir)).encrypt(nonce, key, host.encode())
    return base64.b64encode(nonce + sealed).decode()


def unseal(state_dir: Path, host: str, sealed: str) -> bytes:
    try:
        raw = base64.b64decode(sealed)
        return AESGCM(_master_key(state_dir)).decrypt(raw[:12], raw[12:], host.encode())
    except (InvalidTag, ValueError) as exc:
        raise SealError(
            f"the agent API key of host {host} does not open with {key_file(state_dir)}"
            " (another registry's key file?); copy the key file or re-join the host"
        ) from exc
