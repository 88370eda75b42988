"""How the registry proves itself to a machine agent's API: signed requests, not a bearer.

The key is per host and derived from the host token, `HMAC-SHA256(token, LABEL)`: the agent
computes it from the token it holds, and the registry computes it once, at join, when it
makes the token, and keeps it encrypted with a key file outside its database
(controller/store/agent_keys.py). The database holds only sha256(token), from which this key
cannot be derived, so reading registry.db (or a backup) gives nothing to call an agent with;
a new join retires the old key with the old token.

Each request is signed over its method, raw path with query, a timestamp and the sha256 of
its body and a random nonce (`Authorization: PAAS-HMAC-SHA256 ts=<unix seconds>,nonce=<hex>,
sig=<hex>`). The agent accepts a signature within WINDOW_S of its clock, and each once
(ReplayGuard), so a captured request can neither be altered nor sent again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Generator

import httpx

LABEL = b"paas agent api v1"
SCHEME = "PAAS-HMAC-SHA256"
WINDOW_S = 30.0
_HEADER_RE = re.compile(rf"^{SCHEME} ts=(\d{{1,12}}),nonce=([0-9a-f]{{32}}),sig=([0-9a-f]{{64}})$")


def api_key(host_token: str) -> bytes:
    """The agent API key of the host holding `host_token`."""
    return hmac.new(host_token.encode(), LABEL, hashlib.sha256).digest()


def signature(
    key: bytes, method: str, target: bytes, *, timestamp: int, nonce: str, body: bytes
) -> str:
    digest = hashlib.sha256(body).hexdigest()
    parts = [method.upper().encode(), target, str(timestamp).encode(), nonce.encode()]
    message = b"\n".join([*parts, digest.encode()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def authorization(key: bytes, method: str, target: bytes, body: bytes, *, now: float) -> str:
    """The header value for a request to `target` (raw path and query, as sent)."""
    timestamp, nonce = int(now), secrets.token_hex(16)
    sig = signature(key, method, target, timestamp=timestamp, nonce=nonce, body=body)
    return f"{SCHEME} ts={timestamp},nonce={nonce},sig={sig}"


class ReplayGuard:
    """Signatures seen within the window; a second use of one is refused."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def first_use(self, sig: str, *, now: float) -> bool:
        for old in [s for s, until in self._seen.items() if until < now]:
            del self._seen[old]
        if sig in self._seen:
            return False
        self._seen[sig] = now + 2 * WINDOW_S
        return True


def check(
    key: bytes,
    header: str,
    *,
    method: str,
    target: bytes,
    body: bytes,
    now: float,
    guard: ReplayGuard,
) -> str | None:
    """None when `header` signs this request now; else why not (for a 401)."""
    match = _HEADER_RE.fullmatch(header.strip())
    if match is None:
        return f"missing or malformed registry signature (expected '{SCHEME} ts=..')"
    timestamp, nonce, given = int(match.group(1)), match.group(2), match.group(3)
    if abs(now - timestamp) > WINDOW_S:
        return "the registry signature is outside its validity window (check both clocks)"
    expected = signature(key, method, target, timestamp=timestamp, nonce=nonce, body=body)
    if not hmac.compare_digest(given, expected):
        return "wrong registry signature"
    if not guard.first_use(given, now=now):
        return "this signed request was already used"
    return None


class SignedAuth(httpx.Auth):
    """httpx auth that signs every request (streams included) with an agent API key."""

    requires_request_body = True

    def __init__(self, key: bytes) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = authorization(
            self.key, request.method, request.url.raw_path, request.content, now=time.time()
        )
        yield request
