"""Server slots: each HAProxy backend has a fixed number of `server` lines, so a change of the
hosts serving an app is a runtime API update of those slots, not a reload.

Pure: the previous assignment in, the new one out. A server that stays keeps its slot (its
connections and check state stay too); a new one takes the first free slot; a backend grows by
SLOT_STEP slots only when it has more servers than slots (that one change needs a reload).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SLOT_STEP = 4  # slots per backend, and how many more when they are all taken
EMPTY_ADDRESS = "0.0.0.0"  # an empty slot: in maintenance, never sent traffic
EMPTY_PORT = 1


@dataclass(frozen=True)
class ServerView:
    name: str  # the slot name: s1, s2, ...
    endpoint: str  # "address:port" as HAProxy parses it
    host: str | None = None  # the machine host in this slot; None: the slot is empty
    address: str = EMPTY_ADDRESS  # bare, as the runtime API's `set server ... addr` takes it
    port: int = EMPTY_PORT

    @property
    def filled(self) -> bool:
        return self.host is not None


def _key(server: ServerView) -> tuple[str | None, str]:
    return server.host, server.endpoint


def empty_slot(number: int) -> ServerView:
    return ServerView(name=f"s{number}", endpoint=f"{EMPTY_ADDRESS}:{EMPTY_PORT}")


def slot_count(servers: int, previous: int = 0) -> int:
    """Never fewer slots than before (shrinking would need a reload), else whole steps."""
    return max(previous, max(1, -(-servers // SLOT_STEP)) * SLOT_STEP)


def assign_slots(
    wanted: Sequence[ServerView], previous: Sequence[ServerView] | None = None
) -> tuple[ServerView, ...]:
    """Put each wanted (filled) server in a slot; `previous` is the backend's live slots."""
    before = list(previous or ())
    size = slot_count(len(wanted), len(before))
    slots: list[ServerView | None] = [None] * size
    waiting = list(wanted)
    for number, old in enumerate(before[:size]):
        if not old.filled:
            continue
        match = next((w for w in waiting if _key(w) == _key(old)), None)
        if match is not None:
            slots[number] = match
            waiting.remove(match)
    for number in range(size):
        if slots[number] is None and waiting:
            slots[number] = waiting.pop(0)
    return tuple(empty_slot(n + 1) if s is None else _named(s, n + 1) for n, s in enumerate(slots))


def _named(server: ServerView, number: int) -> ServerView:
    return ServerView(
        name=f"s{number}",
        endpoint=server.endpoint,
        host=server.host,
        address=server.address,
        port=server.port,
    )
