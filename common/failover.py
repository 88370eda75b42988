"""Several registry replicas behind one setting: `http://a:8070,http://b:8070`.

The agents and the CLI keep using the replica that last answered and move to the next one when
it cannot be reached or answers 502/503 (or 500/504 to a read). A request that never reached
the registry (connection refused, connect timeout) is always safe to send to the next replica;
one that may have been half-processed is repeated only when repeating it changes nothing
(reads, and the calls the caller marks idempotent such as an agent's status report). A body
that cannot be sent twice (an upload read from a file as it goes) moves on only when it
never left. Such a repeatable request cut off before any answer (a kept-alive connection the
registry closed just as it went out) is first sent once more to the same replica.

`FailoverTransport` / `AsyncFailoverTransport` apply these rules under any httpx client: the
client's `base_url` is the first replica, and each request is re-addressed to the replica
tried (httpx's own transports only retry the same host; no kept library fails over).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

_URL_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?$")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNAVAILABLE = frozenset({502, 503})  # nothing was done: always safe to repeat elsewhere
MAYBE_DONE = frozenset({500, 504})


def split_urls(value: str) -> list[str]:
    """`"http://a:1, http://b:2/"` -> `["http://a:1", "http://b:2"]`; each must be http(s)."""
    urls: list[str] = []
    for part in value.split(","):
        url = part.strip().rstrip("/")
        if not url:
            continue
        if not _URL_RE.fullmatch(url):
            raise ValueError(
                f"registry URL {url!r} must look like http://HOST:PORT or https://HOST:PORT"
            )
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ValueError("no registry URL given")
    return urls


def never_sent(exc: httpx.TransportError) -> bool:
    """The request cannot have reached the registry: safe to send anywhere else."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


# How a request dies on a kept-alive connection the registry closed as it was sent (its
# keep-alive timer ran out): the connection is reset or closed before any answer.
CUT_OFF = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def retry_status(status: int, method: str, *, idempotent: bool) -> bool:
    if status in UNAVAILABLE:
        return True
    return status in MAYBE_DONE and (method.upper() in SAFE_METHODS or idempotent)


class UrlRing:
    """The replicas in order; `current` sticks to the last one that answered."""

    def __init__(self, value: str) -> None:
        self.urls = split_urls(value)
        self._current = 0

    @property
    def current(self) -> str:
        return self.urls[self._current]

    def attempts(self) -> list[int]:
        """Indexes to try, the current replica first, each once."""
        count = len(self.urls)
        return [(self._current + i) % count for i in range(count)]

    def settle(self, index: int) -> None:
        self._current = index

    def advance(self) -> None:
        """The replica in use failed after it answered (a body cut off): use the next one."""
        self._current = (self._current + 1) % len(self.urls)

    def __str__(self) -> str:
        return ", ".join(self.urls)


# A request extension: `extensions={IDEMPOTENT: True}` says repeating the request changes
# nothing (an agent's status report), so it may go to the next replica after any failure.
IDEMPOTENT = "paas_idempotent"

Failure = httpx.TransportError | int  # what a replica did: an error, or a status it answered


@dataclass(frozen=True)
class Attempt:
    url: str
    failure: Failure


def attempts_of(exc: BaseException) -> list[Attempt]:
    """Every replica a failed request was sent to and what happened, in order."""
    return list(getattr(exc, "_paas_attempts", []))


def _replayable(request: httpx.Request) -> bool:
    return isinstance(request.stream, httpx.ByteStream)


def _repeatable(request: httpx.Request, *, replayable: bool) -> bool:
    """Sending it twice changes nothing: its body can be sent again, and it is a read or a
    call its caller marked idempotent."""
    idempotent = bool(request.extensions.get(IDEMPOTENT))
    return replayable and (request.method.upper() in SAFE_METHODS or idempotent)


def _retry_error(request: httpx.Request, exc: httpx.TransportError, *, replayable: bool) -> bool:
    return never_sent(exc) or _repeatable(request, replayable=replayable)


def _retry_status(request: httpx.Request, status: int, *, replayable: bool) -> bool:
    if not replayable:
        return False
    idempotent = bool(request.extensions.get(IDEMPOTENT))
    return retry_status(status, request.method, idempotent=idempotent)


class _Router:
    """What the sync and async transports share: the ring and how a request is re-addressed."""

    def __init__(self, ring: UrlRing, log: logging.Logger | None) -> None:
        self.ring = ring
        self.log = log
        self._base = httpx.URL(ring.urls[0])

    def plan(self, request: httpx.Request) -> Iterator[tuple[int, httpx.Request, bool]]:
        """(replica index, the request addressed to it, whether another replica follows)."""
        order = self.ring.attempts()
        rest = self._rest(request)
        for position, index in enumerate(order):
            more = position + 1 < len(order)
            if rest is None:  # not addressed to the registry: sent as it is, once
                yield index, request, False
                return
            yield index, self._readdress(request, self.ring.urls[index], rest), more

    def _rest(self, request: httpx.Request) -> bytes | None:
        url, base = request.url, self._base
        prefix = base.raw_path.rstrip(b"/")
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            return None
        if not url.raw_path.startswith(prefix):
            return None
        return url.raw_path[len(prefix) :]

    @staticmethod
    def _readdress(request: httpx.Request, replica: str, rest: bytes) -> httpx.Request:
        target = httpx.URL(replica)
        url = target.copy_with(raw_path=target.raw_path.rstrip(b"/") + rest)
        if url == request.url:
            return request
        headers = request.headers.copy()
        headers["Host"] = url.netloc.decode("ascii")
        return httpx.Request(
            request.method,
            url,
            headers=headers,
            stream=request.stream,
            extensions=request.extensions,
        )

    def moving_on(self, url: str, failure: Failure) -> None:
        if self.log is None:
            return
        if isinstance(failure, int):
            self.log.warning("registry %s answered %d; trying the next replica", url, failure)
        else:
            self.log.warning("registry %s unreachable (%s); trying the next replica", url, failure)


class _Trip:
    """One request's way through the replicas: what each did, and whether to move on."""

    def __init__(self, router: _Router, request: httpx.Request) -> None:
        self.router = router
        self.request = request
        self.replayable = _replayable(request)  # judged before a transport may read the body
        self.tried: list[Attempt] = []
        self._sent_again = False

    def send_again(self, exc: httpx.TransportError) -> bool:
        """True once per request: a repeatable request cut off before its answer is sent to
        the same replica again (the pool dropped the dead connection, so on a new one). A
        pooled connection the registry closed as the request went out dies this way; moving
        to the next replica, or failing with one replica only, would be wrong."""
        if self._sent_again or not isinstance(exc, CUT_OFF):
            return False
        if not _repeatable(self.request, replayable=self.replayable):
            return False
        self._sent_again = True
        return True

    def plan(self) -> Iterator[tuple[int, httpx.Request, bool]]:
        return self.router.plan(self.request)

    def failed(self, index: int, exc: httpx.TransportError, *, more: bool) -> bool:
        """True: try the next replica. False: the caller re-raises `exc` (which then tells
        `attempts_of` every replica tried)."""
        url = self.router.ring.urls[index]
        self.tried.append(Attempt(url, exc))
        if more and _retry_error(self.request, exc, replayable=self.replayable):
            self.router.moving_on(url, exc)
            return True
        exc._paas_attempts = self.tried  # type: ignore[attr-defined]
        return False

    def unavailable(self, index: int, response: httpx.Response, *, more: bool) -> bool:
        """True: discard this answer and try the next replica. False: it is the answer."""
        status = response.status_code
        if more and _retry_status(self.request, status, replayable=self.replayable):
            url = self.router.ring.urls[index]
            self.tried.append(Attempt(url, status))
            self.router.moving_on(url, status)
            return True
        self.router.ring.settle(index)
        return False


class FailoverTransport(httpx.BaseTransport):
    """The replicas in `ring`, tried in order through one inner transport (see module doc)."""

    def __init__(
        self, ring: UrlRing, inner: httpx.BaseTransport, *, log: logging.Logger | None = None
    ) -> None:
        self._router = _Router(ring, log)
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        trip = _Trip(self._router, request)
        for index, sent, more in trip.plan():
            try:
                response = self._send(trip, sent)
            except httpx.TransportError as exc:
                if trip.failed(index, exc, more=more):
                    continue
                raise
            if not trip.unavailable(index, response, more=more):
                return response
            response.read()
            response.close()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(self, trip: _Trip, sent: httpx.Request) -> httpx.Response:
        try:
            return self._inner.handle_request(sent)
        except httpx.TransportError as exc:
            if not trip.send_again(exc):
                raise
        return self._inner.handle_request(sent)

    def close(self) -> None:
        self._inner.close()


class AsyncFailoverTransport(httpx.AsyncBaseTransport):
    """The same for async clients (the agents)."""

    def __init__(
        self,
        ring: UrlRing,
        inner: httpx.AsyncBaseTransport,
        *,
        log: logging.Logger | None = None,
    ) -> None:
        self._router = _Router(ring, log)
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        trip = _Trip(self._router, request)
        for index, sent, more in trip.plan():
            try:
                response = await self._send(trip, sent)
            except httpx.TransportError as exc:
                if trip.failed(index, exc, more=more):
                    continue
                raise
            if not trip.unavailable(index, response, more=more):
                return response
            await response.aread()
            await response.aclose()
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send(self, trip: _Trip, sent: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(sent)
        except httpx.TransportError as exc:
            if not trip.send_again(exc):
                raise
        return await self._inner.handle_async_request(sent)

    async def aclose(self) -> None:
        await self._inner.aclose()
