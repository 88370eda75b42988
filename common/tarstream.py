"""Reading an untrusted tar(.gz) as a stream, with every cost bounded while it is paid.

The agent unpacks artifacts and the registry inspects them; both read archives a user made.
Nothing here loads the member list (`getmembers()`), seeks back, or trusts a declared size
before it is checked: members come one at a time, their count and sizes are checked from the
header before any data is read, and the decompressed bytes (data, headers, padding) and the
wall time are counted on every read, so a gzip bomb or a huge pax header stops at the limit.

Standard library only: the host image runs the agent on Debian 12's own Python (3.11.2).
"""

from __future__ import annotations

import gzip
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
MAX_HEADER_BYTES = 1 << 20  # one pax / GNU long-name record; real ones are a few hundred bytes
HEADER_SLACK_BYTES = 64 << 20  # tar headers and padding on top of the members' data
EXTENDED_HEADER_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


class ArchiveLimit(Exception):
    """The archive passes one of the limits; the message names the limit and its value."""


class ArchiveTooSlow(ArchiveLimit):
    """Reading took longer than `max_seconds` (depends on the load, unlike the other limits)."""


class ArchiveUnreadable(Exception):
    """The bytes are not a readable tar or tar.gz (corrupt, truncated, another format)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one archive. `max_total_bytes` counts members' data; the decompressed stream
    may exceed it by HEADER_SLACK_BYTES of headers. `max_seconds` None: no time limit."""

    max_members: int = 20_000
    max_member_bytes: int = 512 << 20
    max_total_bytes: int = 512 << 20
    max_seconds: float | None = None

    @property
    def max_stream_bytes(self) -> int:
        return self.max_total_bytes + HEADER_SLACK_BYTES


class _BoundedReader:
    """A read-only stream that refuses to deliver more than `max_bytes` or to run past
    `deadline`: the check happens on every read, so no caller can skip it."""

    def __init__(
        self,
        inner: BinaryIO,
        *,
        max_bytes: int,
        deadline: float | None,
        clock: Callable[[], float],
        max_seconds: float | None,
    ) -> None:
        self._inner = inner
        self._max_bytes = max_bytes
        self._deadline = deadline
        self._clock = clock
        self._max_seconds = max_seconds
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = 1 << 20
        if self._deadline is not None and self._clock() > self._deadline:
            raise ArchiveTooSlow(f"reading the archive took longer than {self._max_seconds:g} s")
        data = self._inner.read(min(size, self._max_bytes - self.count + 1))
        self.count += len(data)
        if self.count > self._max_bytes:
            raise ArchiveLimit(
                f"archive unpacks to more than {_amount(self._max_bytes)} of tar data"
            )
        return data

    def close(self) -> None:  # the caller owns the inner stream
        pass


class _CheckedTarInfo(tarfile.TarInfo):
    """Refuses an oversized pax / GNU long-name header before tarfile reads it into memory.

    `_proc_member` is where tarfile (3.8 to 3.13) turns a header block into a member and
    reads extended records; without the hook the stream limit still bounds the read."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in EXTENDED_HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise ArchiveLimit(
                f"archive entry {self.name!r} has an extended header of {self.size} bytes,"
                f" more than the limit of {_amount(MAX_HEADER_BYTES)}"
            )
        member: tarfile.TarInfo = super()._proc_member(tar)  # type: ignore[misc]
        return member


READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, RecursionError)


@contextmanager
def open_stream(
    raw: BinaryIO, limits: Limits, *, clock: Callable[[], float] = time.monotonic
) -> Iterator[tarfile.TarFile]:
    """A TarFile over `raw` (gzip-compressed or plain tar) in stream mode ("r|"): members in
    order, each readable once, never a seek back. Read errors become ArchiveUnreadable."""
    magic = raw.read(2)
    raw.seek(0)
    unzipped = gzip.GzipFile(fileobj=raw, mode="rb") if magic == GZIP_MAGIC else None
    deadline = None if limits.max_seconds is None else clock() + limits.max_seconds
    bounded = _BoundedReader(
        unzipped or raw,  # type: ignore[arg-type]
        max_bytes=limits.max_stream_bytes,
        deadline=deadline,
        clock=clock,
        max_seconds=limits.max_seconds,
    )
    try:
        with tarfile.open(  # type: ignore[call-overload]  # a read-only stream is enough for "r|"
            fileobj=bounded,
            mode="r|",
            tarinfo=_CheckedTarInfo,
        ) as tar:
            yield tar
    except READ_ERRORS as exc:
        raise ArchiveUnreadable(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if unzipped is not None:
            unzipped.close()


def members(tar: tarfile.TarFile, limits: Limits) -> Iterator[tarfile.TarInfo]:
    """Members one by one, refused from their header as soon as one passes the count, the
    size of one member or the total declared size. Hard links are counted by the caller
    (they may become copies)."""
    count = 0
    total = 0
    while True:
        try:
            member = tar.next()
        except READ_ERRORS as exc:
            raise ArchiveUnreadable(f"{type(exc).__name__}: {exc}") from exc
        if member is None:
            return
        count += 1
        if count > limits.max_members:
            raise ArchiveLimit(f"archive has more than {limits.max_members} entries")
        if member.size > limits.max_member_bytes:
            raise ArchiveLimit(
                f"archive entry {member.name!r} is {member.size} bytes, more than the limit of"
                f" {_amount(limits.max_member_bytes)} per file"
            )
        if member.isreg():
            total += member.size
            if total > limits.max_total_bytes:
                raise ArchiveLimit(
                    f"archive unpacks to more than {_amount(limits.max_total_bytes)}"
                    f" at entry {member.name!r}"
                )
        yield member


def _amount(value: int) -> str:
    """'536870912 bytes (512 MiB)': the exact limit, and one a person reads at a glance."""
    return f"{value} bytes ({value / (1 << 20):g} MiB)" if value >= 1 << 20 else f"{value} bytes"
