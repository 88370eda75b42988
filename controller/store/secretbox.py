"""Secrets at rest: config values, TLS private keys and the ACME account key are stored sealed.

A value is sealed with AES-GCM under the registry's current key and stored as
`sb1:<key id>:<base64(nonce + ciphertext)>`; the column's name (`config_vars.value`) is the
associated data, so a sealed value cannot be moved into another column. The keys live outside
the database, in a keyring: a text file of base64 keys, one a line, the first one current
(sealing) and the others kept for opening rows sealed before a rotation. The keyring comes
from `PAAS_SECRET_KEY` (its text), else `PAAS_SECRET_KEY_FILE`, else `<state_dir>/secret.key`,
made 0600 on first use. Replicas sharing PostgreSQL must share it (docs/operations.md).

It is the registry's one keyring: the sealed columns use its keys as they are; every other
purpose (the agents' API keys in controller/store/agent_keys.py) seals under a sub-key derived
from them by HKDF (`subkey`), so one file holds every key and one rotation renews them all.

The `Sealed` and `SealedJSON` column types do the work, so queries, views and the watch answers
see plain values unchanged; the keyring is attached to each engine (`attach`), not global, so
two registries in one process (tests, restore) keep their own keys.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import JSON, Connection, Text
from sqlalchemy.engine import Engine
from sqlalchemy.types import TypeDecorator

from common.fsutil import atomic_write

PREFIX = "sb1:"
KEY_FILE = "secret.key"
KEY_BYTES = 32
_DIALECT_ATTR = "paas_keyring"


class SecretBoxError(RuntimeError):
    """A sealed value cannot be opened (or sealed) with this registry's keyring."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"paas-secretbox\0" + key).hexdigest()[:8]


def subkey(key: bytes, purpose: str) -> bytes:
    """The 32-byte key for `purpose` derived from a keyring key (HKDF-SHA256): independent
    of the key itself and of every other purpose's."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_info(purpose))
    return hkdf.derive(key)


def _info(purpose: str) -> bytes:
    return b"paas-registry keyring\0" + purpose.encode()


def new_key_line() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def parse_keys(text: str, origin: str) -> list[bytes]:
    """Base64 keys, one a line (blank lines and `#` comments ignored), current one first."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.urlsafe_b64decode(line.encode())
        except (binascii.Error, ValueError) as exc:
            raise SecretBoxError(f"{origin} line {number} is not a base64 key") from exc
        if len(key) != KEY_BYTES:
            raise SecretBoxError(f"{origin} line {number} is not a {KEY_BYTES}-byte key")
        keys.append(key)
    if not keys:
        raise SecretBoxError(f"{origin} holds no key")
    return keys


def write_key_file(path: Path, keys: list[bytes], *, replace: bool = True) -> None:
    """Atomically replace `path` (0600 from creation on) with `keys`, the current one first;
    `replace=False`: FileExistsError when it exists (theirs is kept)."""
    text = "# paas-registry secret keyring: the first key seals, the others only open\n"
    text += "".join(base64.urlsafe_b64encode(k).decode() + "\n" for k in keys)
    atomic_write(path, text, mode=0o600, replace=replace)


@dataclass
class Keyring:
    """The registry's keys: from `text` (PAAS_SECRET_KEY) or from `path` (made on first use)."""

    path: Path | None = None
    text: str | None = None
    _keys: list[bytes] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def origin(self) -> str:
        return "PAAS_SECRET_KEY" if self.text is not None else str(self.path)

    def keys(self, *, reload: bool = False) -> list[bytes]:
        with self._lock:
            if self._keys is None or reload:
                self._keys = self._load()
            return self._keys

    def _load(self) -> list[bytes]:
        if self.text is not None:
            return parse_keys(self.text, "PAAS_SECRET_KEY")
        if self.path is None:
            raise SecretBoxError("no secret key configured")
        if not self.path.exists():
            self._create(self.path)
        if self.path.stat().st_mode & 0o077:
            os.chmod(self.path, 0o600)
        return parse_keys(self.path.read_text(), str(self.path))

    @staticmethod
    def _create(path: Path) -> None:
        """A new one-key file; if another process made one first, theirs is kept."""
        with contextlib.suppress(FileExistsError):
            write_key_file(path, [secrets.token_bytes(KEY_BYTES)], replace=False)

    def current(self) -> tuple[str, bytes]:
        key = self.keys()[0]
        return key_id(key), key

    def find(self, kid: str) -> bytes | None:
        for reload in (False, True):  # a rotation by `paas-registry rotate-key` meanwhile
            for key in self.keys(reload=reload):
                if key_id(key) == kid:
                    return key
            if self.text is not None:
                break
        return None

    def seal(self, plain: str, purpose: str) -> str:
        kid, key = self.current()
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(key).encrypt(nonce, plain.encode(), purpose.encode())
        return f"{PREFIX}{kid}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, stored: str, purpose: str) -> str:
        if not is_sealed(stored):
            raise SecretBoxError(
                f"{purpose} holds a value that is not sealed: run 'paas-registry migrate'"
            )
        kid, _, body = stored[len(PREFIX) :].partition(":")
        key = self.find(kid)
        if key is None:
            raise SecretBoxError(
                f"{purpose} was sealed with key {kid}, which is not in {self.origin}: use the"
                " key file of the registry that wrote it (replicas must share one)"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            return AESGCM(key).decrypt(raw[:12], raw[12:], purpose.encode()).decode()
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise SecretBoxError(f"a sealed {purpose} is damaged or was moved") from exc


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX) and stored.count(":") >= 2


def keyring_for(state_dir: Path, *, key: str | None, key_file: Path | None) -> Keyring:
    """The keyring a registry uses: PAAS_SECRET_KEY, else the key file, else the state dir's."""
    if key is not None:
        return Keyring(text=key)
    return Keyring(path=key_file or state_dir / KEY_FILE)


def attach(engine: Engine, keyring: Keyring) -> None:
    """Let the sealed columns of `engine` (and migrations run on it) use `keyring`."""
    setattr(engine.dialect, _DIALECT_ATTR, keyring)


def keyring_of(bind: Engine | Connection | Any) -> Keyring:
    dialect = getattr(bind, "dialect", bind)
    keyring = getattr(dialect, _DIALECT_ATTR, None)
    if keyring is None:
        raise SecretBoxError(
            "this database engine has no secret keyring attached"
            " (controller.store.secretbox.attach)"
        )
    return keyring


class Sealed(TypeDecorator[str]):
    """A text column stored sealed; `purpose` ("table.column") is the associated data."""

    impl = Text
    cache_ok = True

    def __init__(self, purpose: str) -> None:
        super().__init__()
        self.purpose = purpose

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else keyring_of(dialect).seal(value, self.purpose)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else keyring_of(dialect).open(value, self.purpose)


class SealedJSON(TypeDecorator[Any]):
    """A JSON value (a release's config snapshot) stored sealed, as a JSON string: the column
    keeps its JSON type, so no table is rebuilt (SQLite would cascade-delete its instances)."""

    impl = JSON
    cache_ok = True

    def __init__(self, purpose: str) -> None:
        super().__init__()
        self.purpose = purpose

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        return keyring_of(dialect).seal(json.dumps(value), self.purpose)

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        return None if value is None else json.loads(keyring_of(dialect).open(value, self.purpose))


# Every sealed column: (table, column). The migration that seals existing rows, rotate-key and
# the tests walk this list; a new secret column is added here and to its model.
SEALED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("config_vars", "value"),
    ("releases", "config"),
    ("certificates", "key_pem"),
    ("acme_accounts", "key_pem"),
)


def check_keyring(engine: Engine) -> None:
    """Open one stored value of each sealed column: a registry started with the wrong key file
    (a replica with its own) is refused at start, before it seals anything with that key."""
    from sqlalchemy import inspect, select

    from controller.store.models import Base  # every table (not schema.py: that loads alembic)

    tables = Base.metadata.tables
    present = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        for table_name, column_name in SEALED_COLUMNS:
            if table_name in present:
                column = tables[table_name].c[column_name]
                conn.execute(select(column).where(column.is_not(None)).limit(1)).first()
