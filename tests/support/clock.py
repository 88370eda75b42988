"""A registry clock the test moves by hand, for tests whose subject is a deadline or a TTL:
they advance time instead of sleeping it out, so a loaded machine cannot make them race."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from controller.core import clock


class FakeClock:
    """Starts at the real time now and moves only when `advance` is called."""

    def __init__(self) -> None:
        self._now = datetime.now(UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    """The registry's clock (controller/core/clock.py) for this test, moved by the test."""
    fake = FakeClock()
    with clock.use(fake):
        yield fake
