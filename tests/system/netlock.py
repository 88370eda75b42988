"""Test networks in 198.18.0.0/15 are claimed one at a time on this machine.

A test picks a random subnet that no interface uses yet, then puts an address of it on a link;
two tests (xdist workers, or two runs) doing that at the same moment could pick the same one.
Holding this lock from the pick until the address is on the link makes the check reliable.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

LOCK = Path("/tmp/paas-test-198.18.lock")


@contextlib.contextmanager
def claiming_a_subnet() -> Iterator[None]:
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
