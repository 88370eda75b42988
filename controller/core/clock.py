"""The registry's wall clock: timezone-aware UTC `datetime`s, as every table stores them.

Kept apart from the HTTP layer so background loops (heartbeats, ACME renewals, the release
phase) read the time without importing FastAPI; pure functions take `now` as an argument.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
