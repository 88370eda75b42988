"""Per-request limits at the registry's edge, before any route runs.

FastAPI reads and parses a JSON body before it resolves the route's dependencies, so a route's
own `Depends(principal)` comes too late: a 216 MB body without a token was read whole before
its 401. This middleware runs first and, in this order:

1. A request that carries a body (Content-Length > 0 or chunked) or mutates (POST, PUT, PATCH,
   DELETE) must present a known bearer token, or gets 401 without a byte of body read.
2. A mutating request spends one unit of its token's bucket (`token_rate_per_s`, burst
   `token_burst`); an empty bucket answers 429 with Retry-After. One token's flood never slows
   another token: buckets are per token and cost no waiting.
3. An artifact upload takes one of its token's upload slots (`max_uploads_per_token`) and one
   of the registry's (`max_uploads`) for as long as its body streams; none free answers 429
   naming the limit, before a byte of the body is read.
4. The body may not exceed its route's limit: the artifact upload its own (the artifact size
   limit), every other route `max_json_bytes`. A larger Content-Length is 413 at once; a body
   that grows past the limit while streaming (chunked, or more than declared) is cut off with
   413; a body that stops arriving for `body_idle_timeout_s` gets 408.

Refusals before the body is read close the connection (`Connection: close`), so the server
does not drain what the client still sends. Route-level auth and validation still apply.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.api.auth import lookup
from controller.context import Context

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ARTIFACT_UPLOAD = re.compile(r"^/v1/artifacts/[^/]+$")
ARTIFACT_SLACK = 64 * 1024  # the artifact store's own size check answers first
REPORT_ROUTE = "/v1/hosts/{host}/report"


@dataclass(frozen=True)
class RequestLimits:
    max_json_bytes: int
    max_artifact_bytes: int
    body_idle_timeout_s: float
    token_rate_per_s: float
    token_burst: int
    max_uploads_per_token: int = 2
    max_uploads: int = 8

    def is_upload(self, method: str, path: str) -> bool:
        return method == "PUT" and ARTIFACT_UPLOAD.match(path) is not None

    def body_limit(self, method: str, path: str) -> int:
        if self.is_upload(method, path):
            return self.max_artifact_bytes + ARTIFACT_SLACK
        return self.max_json_bytes


@dataclass
class TokenBuckets:
    """One token bucket per API token (by id); pure, with the clock passed in."""

    rate_per_s: float
    burst: int
    _buckets: dict[int, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: int, now: float) -> float:
        """0 when a unit was taken; else the seconds until one is there."""
        level, last = self._buckets.get(key, (float(self.burst), now))
        level = min(float(self.burst), level + (now - last) * self.rate_per_s)
        if level >= 1:
            self._buckets[key] = (level - 1, now)
            return 0.0
        self._buckets[key] = (level, now)
        return (1 - level) / self.rate_per_s


@dataclass
class UploadSlots:
    """Artifact uploads in progress, per token and in total: each one streams up to the
    artifact size limit through the registry, so one token's flood of uploads may hold only a
    few, and all tokens together a few more, whatever the other limits allow."""

    per_token: int
    total: int
    _held: dict[int, int] = field(default_factory=dict)

    def take(self, key: int) -> str | None:
        """None when a slot was taken (give it back with `give`); else why not."""
        if self._held.get(key, 0) >= self.per_token:
            return (
                f"this token already has {self.per_token} artifact uploads in progress (its limit)"
            )
        if sum(self._held.values()) >= self.total:
            return f"the registry already has {self.total} artifact uploads in progress (its limit)"
        self._held[key] = self._held.get(key, 0) + 1
        return None

    def give(self, key: int) -> None:
        left = self._held.get(key, 0) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)


class _BodyRefused(Exception):
    """Raised from `receive` when the body broke a limit; the middleware answers instead."""


def _answer(status: int, detail: str, *, close: bool, **headers: str) -> JSONResponse:
    extra = {"connection": "close"} if close else {}
    return JSONResponse({"detail": detail}, status_code=status, headers={**extra, **headers})


def _too_large(limit: int) -> JSONResponse:
    return _answer(413, f"the body is larger than the limit of {limit} bytes", close=True)


def _bearer(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class RequestLimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        ctx: Context,
        limits: RequestLimits,
        on_report_failed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.ctx = ctx
        self.limits = limits
        self.buckets = TokenBuckets(limits.token_rate_per_s, limits.token_burst)
        self.uploads = UploadSlots(limits.max_uploads_per_token, limits.max_uploads)
        self.on_report_failed = on_report_failed  # the registry could not hear a host
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        has_body = "transfer-encoding" in headers or (declared not in (None, "0"))
        token_id: int | None = None
        if has_body or method in MUTATING:
            refusal, token_id = await self._admit(method, headers, has_body=has_body)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        limit = self.limits.body_limit(method, scope["path"])
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        if token_id is None or not self.limits.is_upload(method, scope["path"]):
            await self._guarded(scope, receive, send, limit=limit, has_body=has_body)
            return
        busy = self.uploads.take(token_id)
        if busy is not None:
            await _answer(429, f"{busy}; retry in a moment", close=True, **{"retry-after": "1"})(
                scope, receive, send
            )
            return
        try:
            await self._guarded(scope, receive, send, limit=limit, has_body=has_body)
        finally:
            self.uploads.give(token_id)

    async def _admit(
        self, method: str, headers: Headers, *, has_body: bool
    ) -> tuple[JSONResponse | None, int | None]:
        """Who is asking (before any body), and may their token do one more change now:
        (a refusal or None, the token's id)."""
        token = _bearer(headers)
        if token is None:
            detail = "missing bearer token: send 'Authorization: Bearer <token>'"
            return _answer(401, detail, close=has_body), None
        who = await run_in_threadpool(lookup, self.ctx, token)
        if who is None or who.token_id is None:
            return _answer(401, "unknown or revoked token", close=has_body), None
        if method in MUTATING:
            wait = self.buckets.take(who.token_id, self.clock())
            if wait > 0:
                return _answer(
                    429,
                    f"too many changes with this token; retry in {wait:.1f} s",
                    close=has_body,
                    **{"retry-after": str(max(1, math.ceil(wait)))},
                ), who.token_id
        return None, who.token_id

    async def _guarded(
        self, scope: Scope, receive: Receive, send: Send, *, limit: int, has_body: bool
    ) -> None:
        """Run the app with a body counted as it streams in and an idle timer on it."""
        received = 0
        body_done = not has_body
        refused: JSONResponse | None = None
        started = False
        status = 0

        async def limited_receive() -> Message:
            nonlocal received, body_done, refused
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_idle_timeout_s)
            except TimeoutError:
                seconds = self.limits.body_idle_timeout_s
                refused = _answer(408, f"the body stopped arriving for {seconds:g} s", close=True)
                raise _BodyRefused from None
            if message["type"] != "http.request":
                body_done = True
                return message
            received += len(message.get("body", b""))
            if received > limit:
                refused = _too_large(limit)
                raise _BodyRefused
            body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, status
            if refused is not None and not started:
                return  # the app's answer to a cut-off body; ours goes out instead
            if message["type"] == "http.response.start":
                started, status = True, int(message["status"])
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if refused is None:
                raise
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route == REPORT_ROUTE and status >= 500 and self.on_report_failed is not None:
                self.on_report_failed()
        if refused is not None and not started:
            await refused(scope, receive, send)
