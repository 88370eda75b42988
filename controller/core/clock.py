"""The registry's wall clock: timezone-aware UTC `datetime`s, as every table stores them.

Kept apart from the HTTP layer so background loops (heartbeats, ACME renewals, the release
phase) read the time without importing FastAPI; pure functions take `now` as an argument.
`use` swaps the source for the whole process (tests advance time instead of sleeping it out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

Source = Callable[[], datetime]


def system_time() -> datetime:
    return datetime.now(UTC)


_source: Source = system_time


def now() -> datetime:
    return _source()


@contextmanager
def use(source: Source) -> Iterator[None]:
    """Read the time from `source` inside the block (deadlines, heartbeats, expiries)."""
    global _source
    previous, _source = _source, source
    try:
        yield
    finally:
        _source = previous
