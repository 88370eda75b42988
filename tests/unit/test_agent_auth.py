"""Signed agent API requests (common/agent_auth.py) and the sealed keys the registry keeps
(controller/store/agent_keys.py): pure checks, no processes."""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.agent_auth import WINDOW_S, ReplayGuard, api_key, authorization, check
from controller.store.agent_keys import SealError, legacy_key_file, seal, unseal
from controller.store.secretbox import Keyring

KEY = api_key("host-token")
NOW = 1_800_000_000.0


def _check(header: str, **changes: object) -> str | None:
    request: dict[str, object] = {
        "method": "POST",
        "target": b"/v1/run/shop",
        "body": b'{"argv":["true"]}',
        "now": NOW,
        "guard": ReplayGuard(),
    }
    request.update(changes)
    return check(KEY, header, **request)  # type: ignore[arg-type]


def test_a_signature_covers_method_path_body_key_and_time() -> None:
    header = authorization(KEY, "POST", b"/v1/run/shop", b'{"argv":["true"]}', now=NOW)
    assert _check(header) is None
    assert _check(header, method="GET") == "wrong registry signature"
    assert _check(header, target=b"/v1/run/bank") == "wrong registry signature"
    assert _check(header, target=b"/v1/run/shop?x=1") == "wrong registry signature"
    assert _check(header, body=b'{"argv":["sh"]}') == "wrong registry signature"
    assert "validity window" in (_check(header, now=NOW + WINDOW_S + 1) or "")
    other = authorization(api_key("other"), "POST", b"/v1/run/shop", b'{"argv":["true"]}', now=NOW)
    assert _check(other) == "wrong registry signature"


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer " + hashlib.sha256(b"host-token").hexdigest(),  # the old, DB-derivable one
        "PAAS-HMAC-SHA256 ts=1,sig=" + "0" * 64,
        "PAAS-HMAC-SHA256 ts=abc,nonce=" + "0" * 32 + ",sig=" + "0" * 64,
    ],
)
def test_other_credentials_are_refused(header: str) -> None:
    assert _check(header) is not None


def test_each_signature_is_accepted_once() -> None:
    guard = ReplayGuard()
    header = authorization(KEY, "GET", b"/v1/logs/shop", b"", now=NOW)
    args = {"method": "GET", "target": b"/v1/logs/shop", "body": b"", "guard": guard}
    assert check(KEY, header, now=NOW, **args) is None  # type: ignore[arg-type]
    assert check(KEY, header, now=NOW + 1, **args) == "this signed request was already used"  # type: ignore[arg-type]
    again = authorization(KEY, "GET", b"/v1/logs/shop", b"", now=NOW)  # a new nonce
    assert check(KEY, again, now=NOW + 1, **args) is None  # type: ignore[arg-type]


def test_sealed_keys_open_only_with_the_keyring_and_for_their_host(tmp_path: Path) -> None:
    keyring = Keyring(path=tmp_path / "a" / "secret.key")
    sealed = seal(keyring, "m1", KEY)
    assert (tmp_path / "a" / "secret.key").stat().st_mode & 0o777 == 0o600
    assert not legacy_key_file(tmp_path / "a").exists()  # one key file: the keyring
    assert unseal(keyring, "m1", sealed, state_dir=tmp_path / "a") == KEY
    assert KEY.hex() not in sealed and sealed.startswith(f"ak2:{keyring.current()[0]}:")
    with pytest.raises(SealError):
        unseal(keyring, "m2", sealed, state_dir=tmp_path / "a")  # moved to another host's row
    other = Keyring(path=tmp_path / "b" / "secret.key")
    with pytest.raises(SealError, match="not in"):
        unseal(other, "m1", sealed, state_dir=tmp_path / "b")  # another registry's keyring
    # Sealed under a key derived for this purpose, not the keyring key itself.
    raw = base64.b64decode(sealed.split(":", 2)[2])
    with pytest.raises(InvalidTag):
        AESGCM(keyring.current()[1]).decrypt(raw[:12], raw[12:], b"m1")


def test_a_key_sealed_with_the_legacy_agent_api_key_file_still_opens(tmp_path: Path) -> None:
    """Registries before the one keyring sealed with <state_dir>/agent-api.key: still read."""
    master = secrets.token_bytes(32)
    legacy_key_file(tmp_path).write_bytes(master)
    nonce = secrets.token_bytes(12)
    sealed = base64.b64encode(nonce + AESGCM(master).encrypt(nonce, KEY, b"m1")).decode()
    keyring = Keyring(path=tmp_path / "secret.key")
    assert unseal(keyring, "m1", sealed, state_dir=tmp_path) == KEY
    with pytest.raises(SealError):
        unseal(keyring, "m2", sealed, state_dir=tmp_path)
    with pytest.raises(SealError, match=r"agent-api\.key"):
        unseal(keyring, "m1", sealed, state_dir=tmp_path / "elsewhere")  # the file is gone
