"""A blocking-query watch that a newer index seen elsewhere can cut short."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def unless_rewatched(watch: Awaitable[T], rewatch: asyncio.Event) -> T | None:
    """The watch's answer, or None (the watch cancelled) when `rewatch` is set first.

    A watch sent while the host was cut off can hang on a dead connection long after the
    link is back; a report's answer showing the registry past our index sets `rewatch`, so
    the caller watches again at once instead of waiting out the old request."""
    rewatch.clear()
    fetch = asyncio.ensure_future(watch)
    woken = asyncio.ensure_future(rewatch.wait())
    try:
        await asyncio.wait({fetch, woken}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
    return fetch.result() if not fetch.cancelled() else None
