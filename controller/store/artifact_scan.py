"""Reading an artifact's Procfile and paas.toml when a release is created: bounded work on
bytes a user chose.

The archive is streamed, never listed: member count, each member's size, decompressed bytes
and time are bounded while they are read (common/tarstream.py; the same limits as the agents
unpack with), and reading stops as soon as both files are found. A 16 MB artifact holding a
16 GiB member used to take 62 s here; it is now refused from that member's header.

The release route is a sync route, so a scan holds one of the worker threads every sync route
shares (40). The gate below caps what scans can hold: SCAN_SLOTS run at once, SCAN_QUEUE more
wait for a slot, and past that the answer is 503 at once, so a flood of releases of hostile
artifacts never takes the threads other requests need. A refusal is remembered by sha256 (the
bytes behind a name never change): asking again is answered without reading anything.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from common.tarstream import (
    ArchiveLimit,
    ArchiveTooSlow,
    ArchiveUnreadable,
    Limits,
    members,
    open_stream,
)
from controller.errors import Invalid, RegistryError, TooLarge

MAX_MANIFEST_BYTES = 1024 * 1024
SCAN_LIMITS = Limits(
    max_members=20_000, max_member_bytes=512 << 20, max_total_bytes=512 << 20, max_seconds=10.0
)
SCAN_SLOTS = 2  # scans running at once per registry process
SCAN_QUEUE = 8  # scans waiting for a slot (each holds a worker thread while it waits)
APP_FILES = ("Procfile", "paas.toml")
MAX_REMEMBERED_REFUSALS = 1024


class ScanTooSlow(TooLarge):
    """Reading the artifact passed the time limit (not remembered: it depends on the load)."""


class ScanBusy(RegistryError):
    """Every scan slot and queue place is taken; the client may retry in a moment."""

    status_code = 503


class _Gate:
    """At most `slots` holders at once and `queue` more waiting; anyone else is refused."""

    def __init__(self, *, slots: int, queue: int) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._inside = 0
        self._capacity = slots + queue

    @contextmanager
    def enter(self) -> Iterator[None]:
        with self._lock:
            if self._inside >= self._capacity:
                raise ScanBusy(
                    f"the registry is reading {self._inside} other artifacts (its limit);"
                    " nothing was changed, retry in a few seconds"
                )
            self._inside += 1
        try:
            with self._slots:
                yield
        finally:
            with self._lock:
                self._inside -= 1


_gate = _Gate(slots=SCAN_SLOTS, queue=SCAN_QUEUE)
_refusals: OrderedDict[tuple[str, Limits], RegistryError] = OrderedDict()
_refusals_lock = threading.Lock()


def read_app_files_from(
    raw: BinaryIO, sha256: str, *, limits: Limits = SCAN_LIMITS
) -> tuple[str, str | None]:
    """(Procfile text, paas.toml text or None) from an artifact's bytes (TooLarge, 413, names
    the limit passed; Invalid, 422, a broken archive or missing Procfile; ScanBusy, 503)."""
    key = (sha256, limits)
    _raise_if_refused(key)
    with _gate.enter():
        _raise_if_refused(key)  # refused while this request waited for a slot
        try:
            return _scan(raw, sha256, limits)
        except (TooLarge, Invalid) as exc:
            if not isinstance(exc, ScanTooSlow):
                with _refusals_lock:
                    _refusals[key] = exc
                    while len(_refusals) > MAX_REMEMBERED_REFUSALS:
                        _refusals.popitem(last=False)
            raise


def _raise_if_refused(key: tuple[str, Limits]) -> None:
    with _refusals_lock:
        known = _refusals.get(key)
    if known is not None:
        raise type(known)(str(known))


def _scan(raw: BinaryIO, sha256: str, limits: Limits) -> tuple[str, str | None]:
    found: dict[str, str] = {}
    try:
        with open_stream(raw, limits) as tar:
            for member in members(tar, limits):
                name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
                if name in APP_FILES and name not in found:
                    found[name] = _read_text(tar, member, name)
                    if len(found) == len(APP_FILES):
                        break
    except ArchiveTooSlow as exc:
        raise ScanTooSlow(f"artifact {sha256[:12]} refused: {exc}") from exc
    except ArchiveLimit as exc:
        raise TooLarge(f"artifact {sha256[:12]} refused: {exc}") from exc
    except ArchiveUnreadable as exc:
        raise Invalid(f"artifact {sha256} is not a valid .tar.gz: {exc}") from exc
    if "Procfile" not in found:
        raise Invalid("artifact has no Procfile at its top level")
    return found["Procfile"], found.get("paas.toml")


def _read_text(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> str:
    if not member.isfile():
        raise Invalid(f"{name} in the artifact is not a regular file")
    if member.size > MAX_MANIFEST_BYTES:
        raise Invalid(f"{name} in the artifact is larger than {MAX_MANIFEST_BYTES} bytes")
    extracted = tar.extractfile(member)
    if extracted is None:
        raise Invalid(f"{name} in the artifact cannot be read")
    data = extracted.read()
    try:
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
    except UnicodeDecodeError:
        raise Invalid(f"{name} in the artifact is not UTF-8 text") from None
