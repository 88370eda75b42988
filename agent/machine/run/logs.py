"""Instance logs on a machine: stamped, rotated, read back and followed.

An instance writes straight to `logs/<app>/<id>.log` (opened O_APPEND by procs.spawn). We do
NOT put a pipe to the agent between the app and its log: instances outlive agent restarts
(they are adopted, see agent/machine/adoption.py), and an app whose stdout is a pipe to a dead
agent dies of SIGPIPE or blocks once the pipe is full. Instead the agent drains each raw log
every `interval_s` into `logs/<app>/<id>.out`, one line per record with the time it was read
(so it is at most ~`interval_s` late while the agent runs, and the time of the catch-up after
an agent restart), and rotates by size, copytruncate style:

- the raw file is truncated once it passes `max_bytes`, right after it was read to its end.
  The app's O_APPEND writes then land at the new end, so no sparse file and no reopen. The
  lines written between our last read and the truncate (microseconds) are the only ones a
  rotation can lose; that is logrotate's copytruncate trade-off, chosen for the reason above.
- the stamped file, written only by us, rotates by rename: `.out` -> `.out.1` ... keeping
  `keep` old files.

Each drained raw file has its offset kept in `<id>.offset`, so a restarted agent neither
repeats nor skips lines.

Health checks (the agent's, agent/machine/health.py, and HAProxy's) send `User-Agent:
paas-health/1`;
an access log that records the User-Agent (gunicorn's, nginx's combined format) then shows
about one check line per second per instance. Those lines are kept, but readers skip them
unless asked (`health=True`), so `--lines 100` means a hundred lines of the app's own.
Access logs without the User-Agent (uvicorn's, stdlib http.server's) cannot be told apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common.fsutil import atomic_write

log = logging.getLogger(__name__)

HEALTH_CHECK_MARK = "paas-health/"  # the User-Agent of every health check we send
PARTIAL_LINE_MAX = 64 * 1024  # a line without a newline longer than this is taken as is
READ_CHUNK_MAX = 4 * 1024 * 1024  # per drain and file: a flood is caught up over ticks


@dataclass(frozen=True)
class LogLine:
    app: str
    instance: int
    time: float  # unix seconds, when the agent read it
    line: str

    def to_wire(self, host: str) -> dict[str, object]:
        stamp = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return {
            "app": self.app,
            "instance": self.instance,
            "host": host,
            "time": stamp.replace("+00:00", "Z"),
            "line": self.line,
        }


def is_health_check(text: str) -> bool:
    """A line an app logged for one of our health checks (its User-Agent is in it)."""
    return HEALTH_CHECK_MARK in text


def _format(stamp: float, text: str) -> str:
    return f"{stamp:.6f} {text}\n"


def _parse(app: str, instance: int, raw: str) -> LogLine | None:
    stamp, _, text = raw.rstrip("\n").partition(" ")
    try:
        return LogLine(app=app, instance=instance, time=float(stamp), line=text)
    except ValueError:
        return None


class LogStore:
    """The stamped logs of every instance under `logs_dir` (`<app>/<id>.out[.N]`)."""

    def __init__(
        self,
        logs_dir: Path,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        keep: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.logs_dir = Path(logs_dir)
        self.max_bytes = max_bytes
        self.keep = keep
        self.clock = clock

    # ---- draining and rotation ------------------------------------------------------------

    def drain_all(self) -> list[LogLine]:
        """Drain every raw instance log; returns the new lines (oldest first per instance)."""
        new: list[LogLine] = []
        for raw in sorted(self.logs_dir.glob("*/*.log")):
            if not raw.stem.isdigit():
                continue
            try:
                new.extend(self.drain(raw.parent.name, int(raw.stem)))
            except OSError as exc:
                log.warning("could not collect %s: %s", raw, exc)
        return new

    def drain(self, app: str, instance: int) -> list[LogLine]:
        folder = self.logs_dir / app
        raw, offset_file = folder / f"{instance}.log", folder / f"{instance}.offset"
        offset = _read_offset(offset_file)
        with raw.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < offset:  # truncated or replaced behind our back: start over
                offset = 0
            if size == offset:
                return []
            handle.seek(offset)
            data = handle.read(min(size - offset, READ_CHUNK_MAX))
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) < PARTIAL_LINE_MAX:
                return []  # half a line: wait for the rest
            if end == 0:
                end = len(data)
            taken = data[:end]
            offset += len(taken)
            if offset >= self.max_bytes and offset >= size:
                os.truncate(raw, 0)  # copytruncate: the app appends at the new end
                offset = 0
        _write_offset(offset_file, offset)
        stamp = self.clock()
        lines = [
            LogLine(app=app, instance=instance, time=stamp, line=text)
            for text in taken.decode(errors="replace").splitlines()
        ]
        self._append(folder / f"{instance}.out", lines)
        return lines

    def _append(self, path: Path, lines: list[LogLine]) -> None:
        if not lines:
            return
        with path.open("a", encoding="utf-8") as out:
            out.writelines(_format(entry.time, entry.line) for entry in lines)
            size = out.tell()
        if size >= self.max_bytes:
            self._rotate(path)

    def _rotate(self, path: Path) -> None:
        oldest = path.with_name(f"{path.name}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                older.rename(path.with_name(f"{path.name}.{n + 1}"))
        if self.keep > 0:
            path.rename(path.with_name(f"{path.name}.1"))
        else:
            path.unlink()

    def prune(self, *, keep: set[tuple[str, int]], older_than_s: float) -> int:
        """Remove the logs of instances that are gone (not in `keep`) and silent for
        `older_than_s`: instance ids are never reused, so without this every deploy would
        leave its files behind. Returns how many instances were removed."""
        cutoff = self.clock() - older_than_s
        newest: dict[tuple[str, int], float] = {}
        for path in self.logs_dir.glob("*/*"):
            stem = path.name.split(".", 1)[0]
            if not stem.isdigit():
                continue
            key = (path.parent.name, int(stem))
            with contextlib.suppress(FileNotFoundError):
                newest[key] = max(newest.get(key, 0.0), path.stat().st_mtime)
        removed = 0
        for (app, iid), mtime in newest.items():
            if (app, iid) in keep or mtime >= cutoff:
                continue
            for path in (self.logs_dir / app).glob(f"{iid}.*"):
                path.unlink(missing_ok=True)
            removed += 1
        return removed

    # ---- reading ----------------------------------------------------------------------------

    def instances(self, app: str) -> list[int]:
        folder = self.logs_dir / app
        found = (
            {p.name.split(".", 1)[0] for p in folder.glob("*.out*")} if folder.is_dir() else set()
        )
        return sorted(int(name) for name in found if name.isdigit())

    def history(
        self,
        app: str,
        *,
        since: float | None = None,
        lines: int | None = None,
        health: bool = True,
    ) -> list[LogLine]:
        """The app's stamped lines on this host, merged by time, the last `lines` of them;
        without health-check lines unless `health`."""
        streams = [self._read_instance(app, iid, since) for iid in self.instances(app)]
        merged = [
            entry
            for entry in heapq.merge(*streams, key=lambda entry: entry.time)
            if health or not is_health_check(entry.line)
        ]
        return merged[-lines:] if lines is not None and lines > 0 else merged

    def _read_instance(self, app: str, instance: int, since: float | None) -> Iterator[LogLine]:
        base = self.logs_dir / app / f"{instance}.out"
        files = [base.with_name(f"{base.name}.{n}") for n in range(self.keep, 0, -1)] + [base]
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                if since is not None and path.stat().st_mtime < since:
                    continue  # everything in it is older
                with path.open(encoding="utf-8", errors="replace") as handle:
                    for raw in handle:
                        entry = _parse(app, instance, raw)
                        if entry is not None and (since is None or entry.time >= since):
                            yield entry


class LogFollowers:
    """Who follows which app: `publish` hands new lines to each follower's queue."""

    def __init__(self, max_queued: int = 10000) -> None:
        self._queues: dict[str, set[asyncio.Queue[LogLine]]] = {}
        self.max_queued = max_queued

    @contextlib.contextmanager
    def follow(self, app: str) -> Iterator[asyncio.Queue[LogLine]]:
        queue: asyncio.Queue[LogLine] = asyncio.Queue(self.max_queued)
        self._queues.setdefault(app, set()).add(queue)
        try:
            yield queue
        finally:
            self._queues[app].discard(queue)
            if not self._queues[app]:
                del self._queues[app]

    def publish(self, lines: Iterable[LogLine]) -> None:
        for entry in lines:
            for queue in self._queues.get(entry.app, ()):
                with contextlib.suppress(asyncio.QueueFull):  # a stalled reader loses lines
                    queue.put_nowait(entry)


async def collect_forever(
    store: LogStore,
    followers: LogFollowers,
    interval_s: float,
    *,
    current: Callable[[], set[tuple[str, int]]] = set,
    retention_s: float = 7 * 86400,
    prune_every_s: float = 3600,
) -> None:
    """Drain the raw logs every `interval_s` (in a thread: it is file I/O) and publish; once
    in a while remove the logs of instances gone for longer than `retention_s`."""
    last_prune = 0.0
    while True:
        try:
            new = await asyncio.to_thread(store.drain_all)
            followers.publish(new)
            if time.monotonic() - last_prune >= prune_every_s:
                last_prune = time.monotonic()
                keep = current()
                await asyncio.to_thread(store.prune, keep=keep, older_than_s=retention_s)
        except Exception:
            log.exception("collecting instance logs failed; will retry")
        await asyncio.sleep(interval_s)


def _read_offset(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _write_offset(path: Path, offset: int) -> None:
    # Rewritten every interval; a lost offset only re-reads some lines, so no fsync.
    atomic_write(path, str(offset), fsync=False)
