"""The sealed envelope of a backup file: no byte of it is readable without the key.

A backup holds every config value, TLS key and token hash in clear inside its tar, so the
whole `.tar.gz` stream is sealed: a magic line, a JSON header line (how the file key is made,
a random salt), then chunks of at most 1 MiB, each AES-GCM sealed under the file key with its
index as nonce and the header's hash and a last-chunk flag as associated data (reordered,
truncated or altered files are refused). The file key comes from either
- the registry's current secret key (controller/store/secretbox.py), by HKDF with the salt: restore
  needs a keyring holding that key (the same registry, or a copy of its key file); or
- a passphrase (`--passphrase-file`), by scrypt: restore anywhere with the same passphrase.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
import tempfile
from pathlib import Path
from typing import IO, Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from controller.store.secretbox import Keyring

MAGIC = b"PAAS-REGISTRY-BACKUP sealed-1\n"
CHUNK = 1 << 20
_RECORD = struct.Struct(">BI")  # last-chunk flag, ciphertext length
SCRYPT = {"n": 1 << 15, "r": 8, "p": 1}
MAX_HEADER = 4096

Kdf = Literal["keyring", "scrypt"]


class SealError(RuntimeError):
    """The file is not a sealed backup, or the key or passphrase given does not open it."""


def _file_key(header: dict[str, Any], *, keyring: Keyring, passphrase: bytes | None) -> bytes:
    salt = base64.b64decode(header["salt"])
    if header["kdf"] == "scrypt":
        if passphrase is None:
            raise SealError("this backup was sealed with a passphrase: pass --passphrase-file")
        kdf = Scrypt(salt=salt, length=32, n=header["n"], r=header["r"], p=header["p"])
        return kdf.derive(passphrase)
    if header["kdf"] != "keyring":
        raise SealError(f"unknown backup key derivation {header['kdf']!r}")
    if passphrase is not None:
        raise SealError(
            "this backup was sealed with the registry's secret key, not a passphrase:"
            " restore it without --passphrase-file, with that registry's key file"
        )
    master = keyring.find(header["kid"])
    if master is None:
        raise SealError(
            f"this backup was sealed with secret key {header['kid']}, which is not in"
            f" {keyring.origin}: use the key file of the registry that made it"
        )
    return HKDF(hashes.SHA256(), 32, salt, b"paas-registry backup v1").derive(master)


def _nonce(index: int) -> bytes:
    return struct.pack(">Q", index) + b"\0\0\0\0"


class SealedWriter:
    """A write-only file object that seals what is written to `raw`; `close` ends the file."""

    def __init__(self, raw: IO[bytes], *, keyring: Keyring, passphrase: bytes | None) -> None:
        salt = secrets.token_bytes(16)
        header: dict[str, Any] = {"salt": base64.b64encode(salt).decode()}
        if passphrase is not None:
            header |= {"kdf": "scrypt", **SCRYPT}
        else:
            header |= {"kdf": "keyring", "kid": keyring.current()[0]}
        line = json.dumps(header).encode() + b"\n"
        self._aead = AESGCM(_file_key(header, keyring=keyring, passphrase=passphrase))
        self._aad = hashlib.sha256(MAGIC + line).digest()
        self._raw = raw
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        raw.write(MAGIC + line)

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) > CHUNK:
            self._emit(bytes(self._buffer[:CHUNK]), last=False)
            del self._buffer[:CHUNK]
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        if not self._closed:
            self._emit(bytes(self._buffer), last=True)
            self._buffer.clear()
            self._closed = True
            self._raw.flush()

    def _emit(self, plain: bytes, *, last: bool) -> None:
        flag = 1 if last else 0
        sealed = self._aead.encrypt(_nonce(self._index), plain, self._aad + bytes([flag]))
        self._raw.write(_RECORD.pack(flag, len(sealed)) + sealed)
        self._index += 1


def is_sealed(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC


def open_sealed(path: Path, *, keyring: Keyring, passphrase: bytes | None) -> IO[bytes]:
    """The plain stream of `path`, every chunk checked, in an unlinked temp file at offset 0."""
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise SealError(
                f"{path} is not a registry backup (a sealed one, from `paas-registry backup`)"
            )
        line = fh.readline(MAX_HEADER)
        try:
            header = json.loads(line)
            key = _file_key(header, keyring=keyring, passphrase=passphrase)
        except (ValueError, KeyError, TypeError) as exc:
            raise SealError(f"{path} has a damaged header: {exc}") from exc
        aead, aad = AESGCM(key), hashlib.sha256(MAGIC + line).digest()
        plain = tempfile.TemporaryFile()  # noqa: SIM115  (handed to the caller)
        try:
            _unseal_chunks(fh, plain, aead, aad, passphrase=passphrase)
        except BaseException:
            plain.close()
            raise
    plain.seek(0)
    return plain


def _unseal_chunks(
    fh: IO[bytes], out: IO[bytes], aead: AESGCM, aad: bytes, *, passphrase: bytes | None
) -> None:
    index = 0
    while True:
        record = fh.read(_RECORD.size)
        if len(record) != _RECORD.size:
            raise SealError("the backup is truncated (its last chunk is missing)")
        flag, size = _RECORD.unpack(record)
        if flag not in (0, 1) or size > CHUNK + 16:
            raise SealError(f"the backup is damaged at chunk {index}")
        sealed = fh.read(size)
        if len(sealed) != size:
            raise SealError(f"the backup is truncated (in chunk {index})")
        try:
            out.write(aead.decrypt(_nonce(index), sealed, aad + bytes([flag])))
        except InvalidTag as exc:
            if index == 0:
                what = "passphrase" if passphrase is not None else "secret key"
                raise SealError(
                    f"the {what} given does not open this backup (or the file is damaged)"
                ) from exc
            raise SealError(f"the backup is damaged at chunk {index}") from exc
        index += 1
        if flag == 1:
            if fh.read(1):
                raise SealError("the backup has bytes after its last chunk")
            return
