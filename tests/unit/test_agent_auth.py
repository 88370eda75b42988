"""Signed agent API requests (common/agent_auth.py) and the sealed keys the registry keeps
(controller/store/agent_keys.py): pure checks, no processes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.agent_auth import WINDOW_S, ReplayGuard, api_key, authorization, check
from controller.store.agent_keys import SealError, key_file, seal, unseal

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


def test_sealed_keys_open_only_with_the_key_file_and_for_their_host(tmp_path: Path) -> None:
    sealed = seal(tmp_path / "a", "m1", KEY)
    assert key_file(tmp_path / "a").stat().st_mode & 0o777 == 0o600
    assert unseal(tmp_path / "a", "m1", sealed) == KEY
    assert KEY.hex() not in sealed
    with pytest.raises(SealError):
        unseal(tmp_path / "a", "m2", sealed)  # moved to another host's row
    with pytest.raises(SealError):
        unseal(tmp_path / "b", "m1", sealed)  # another registry's key file
