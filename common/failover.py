"""Several registry replicas behind one setting: `http://a:8070,http://b:8070`.

The agents and the CLI keep using the replica that last answered and move to the next one when
it cannot be reached or answers 502/503 (or 500/504 to a read). A request that never reached
the registry (connection refused, connect timeout) is always safe to send to the next replica;
one that may have been half-processed is repeated only when repeating it changes nothing
(reads, and the calls the caller marks idempotent such as an agent's status report).
"""

from __future__ import annotations

import re

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


def retry_transport_error(exc: httpx.TransportError, method: str, *, idempotent: bool) -> bool:
    return never_sent(exc) or method.upper() in SAFE_METHODS or idempotent


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

    def __str__(self) -> str:
        return ", ".join(self.urls)
