"""The attack clients of bench/hostile.py, each run in its own process (`run_in_process`) so
the measuring loops in the benchmark's process are never starved by the attacker's work.

Every attack aims at the registry on 127.0.0.1 only and stops at its deadline; each returns
plain counts (a dict) through a queue. Sources of the slow sockets are spread over
127.0.0.2.. as a real attacker's many addresses would be.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import multiprocessing
import queue
import resource
import selectors
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.archive_corpus import MiB, TarGz, big_file, file

SLOW_HEAD = b"POST /v1/apps HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n"
TRICKLE_EVERY_S = 2.0  # one more header line per open socket
REOPEN_AFTER_S = 5.0  # a dropped socket is rebuilt on the next cycle, as slowloris.py does
CONNECT_TIMEOUT_S = 5.0
REFUSED_AT_ONCE_S = 1.0  # closed by the registry within this of connecting: refused
MAX_CONNECTING = 500  # connects in flight per process
BOMB_MEMBER = 64 * MiB
BOMB_MEMBERS = 64  # 4 GiB of zeros, ~4 MB of gzip


def run_in_process(target: Callable[..., None], *args: Any) -> tuple[Any, Any]:
    """Start `target(*args, out)` in a fresh (spawned) process; (process, result queue)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out), daemon=True)
    proc.start()
    return proc, out


def collect(proc: Any, out: Any, *, timeout_s: float) -> dict[str, Any]:
    """The attacker's counts; kills it (by its pid) if it overruns its deadline."""
    try:
        result: dict[str, Any] = out.get(timeout=timeout_s)
    except queue.Empty:
        result = {"error": "the attacker process sent no result in time"}
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=10)
    return result


def raise_nofile(wanted: int) -> None:
    """Soft and (as root) hard RLIMIT_NOFILE up to `wanted` for this attacker process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return
        wanted = hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# ---- slowloris -------------------------------------------------------------------------------


@dataclass
class _Slow:
    slot: int
    started: float
    connected_at: float | None = None


@dataclass
class SlowCounts:
    attempts: int = 0
    connected: int = 0
    refused_at_once: int = 0  # closed by the registry within REFUSED_AT_ONCE_S
    cut_later: int = 0  # closed later: the header timeout
    connect_failed: int = 0  # no TCP connection (backlog full, timeout, no port)
    open_at_end: int = 0
    peak_open: int = 0
    longest_s: float = 0.0  # longest life of a slow socket the registry closed
    answers: Counter[str] = field(default_factory=Counter)


def slowloris(port: int, sources: list[str], count: int, duration_s: float, out: Any) -> None:
    """Keep `count` connections open with an unfinished request head, one header line every
    TRICKLE_EVERY_S; rebuild the dropped ones REOPEN_AFTER_S later. Runs until `duration_s`."""
    raise_nofile(count + 512)
    counts = SlowCounts()
    selector = selectors.DefaultSelector()
    live: dict[socket.socket, _Slow] = {}
    due: deque[tuple[float, int]] = deque((0.0, slot) for slot in range(count))
    connecting = 0
    now = time.monotonic()
    deadline = now + duration_s
    next_trickle = now + TRICKLE_EVERY_S

    def drop(sock: socket.socket, *, reopen_at: float) -> None:
        nonlocal connecting
        info = live.pop(sock)
        if info.connected_at is None:
            connecting -= 1
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(sock)
        sock.close()
        due.append((reopen_at, info.slot))

    while (now := time.monotonic()) < deadline:
        while due and due[0][0] <= now and connecting < MAX_CONNECTING:
            _, slot = due.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            counts.attempts += 1
            try:
                sock.bind((sources[slot % len(sources)], 0))
                code = sock.connect_ex(("127.0.0.1", port))
            except OSError:
                code = errno.EADDRNOTAVAIL
            if code not in (0, errno.EINPROGRESS):
                counts.connect_failed += 1
                sock.close()
                due.append((now + REOPEN_AFTER_S, slot))
                continue
            live[sock] = _Slow(slot, now)
            connecting += 1
            selector.register(sock, selectors.EVENT_WRITE)
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            info = live[sock]
            now = time.monotonic()
            if info.connected_at is None:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    counts.connect_failed += 1
                    drop(sock, reopen_at=now + REOPEN_AFTER_S)
                    continue
                connecting -= 1
                info.connected_at = now
                counts.connected += 1
                with contextlib.suppress(OSError):
                    sock.send(SLOW_HEAD)
                selector.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                counts.answers[data.split(b"\r\n", 1)[0].decode(errors="replace")[:40]] += 1
            lived = now - info.connected_at
            if lived < REFUSED_AT_ONCE_S:
                counts.refused_at_once += 1
            else:
                counts.cut_later += 1
                counts.longest_s = max(counts.longest_s, lived)
            drop(sock, reopen_at=now + REOPEN_AFTER_S)
        now = time.monotonic()
        open_now = sum(1 for i in live.values() if i.connected_at is not None)
        counts.peak_open = max(counts.peak_open, open_now)
        if now >= next_trickle:
            next_trickle = now + TRICKLE_EVERY_S
            for sock, info in list(live.items()):
                if info.connected_at is None:
                    if now - info.started > CONNECT_TIMEOUT_S:
                        counts.connect_failed += 1
                        drop(sock, reopen_at=now + REOPEN_AFTER_S)
                    continue
                with contextlib.suppress(OSError):
                    sock.send(b"X-Slow: 1\r\n")
    counts.open_at_end = sum(1 for i in live.values() if i.connected_at is not None)
    for sock in list(live):
        sock.close()
    selector.close()
    out.put({**counts.__dict__, "answers": dict(counts.answers)})


# ---- oversized bodies ------------------------------------------------------------------------


def _body_request(port: int, n: int, size: int) -> tuple[bytes, bool]:
    """Three shapes in turn, none with a token: JSON with a Content-Length, an artifact upload
    with a Content-Length, a chunked JSON body."""
    kind = n % 3
    if kind == 0:
        return (
            b"POST /v1/apps HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode(),
            False,
        )
    if kind == 1:
        sha = f"{n:064x}"
        return (
            f"PUT /v1/artifacts/{sha} HTTP/1.1\r\nHost: registry\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode(),
            False,
        )
    return (
        b"POST /v1/apps HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        True,
    )


def _send_body(port: int, n: int, size: int) -> tuple[str, int]:
    """(the registry's answer or what cut the connection, body bytes the kernel took)."""
    head, chunked = _body_request(port, n, size)
    sent = 0
    chunk = b"x" * MiB
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            sock.sendall(head)
            while sent < size:
                piece = chunk[: size - sent]
                frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
                sock.sendall(frame)
                sent += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError as exc:
            outcome = f"cut ({type(exc).__name__})"
        else:
            outcome = "sent whole"
        try:
            answer = sock.recv(4096)
        except OSError as exc:
            return f"{outcome}, then {type(exc).__name__}", sent
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    return (f"{outcome}, {status[9:]}" if status else f"{outcome}, closed"), sent


def oversized(
    port: int, total_mb: int, body_mb: int, parallel: int, duration_s: float, out: Any
) -> None:
    """`total_mb` in bodies of `body_mb` (the last one the rest), spread evenly over
    `duration_s`, `parallel` at once."""
    whole, rest = divmod(total_mb, body_mb)
    sizes_mb = [body_mb] * whole + ([rest] if rest else [])
    bodies = len(sizes_mb)
    start = time.monotonic()
    outcomes: Counter[str] = Counter()
    taken = 0
    lock = threading.Lock()

    def one(n: int) -> None:
        nonlocal taken
        time.sleep(max(0.0, start + n * duration_s / bodies - time.monotonic()))
        try:
            outcome, sent = _send_body(port, n, sizes_mb[n] * MiB)
        except OSError as exc:
            outcome, sent = f"no connection ({type(exc).__name__})", 0
        with lock:
            outcomes[outcome] += 1
            taken += sent

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, range(bodies)))
    time.sleep(max(0.0, start + duration_s - time.monotonic()))  # the attack lasts its time
    out.put(
        {
            "bodies": bodies,
            "offered_mb": sum(sizes_mb),
            "taken_mb": round(taken / MiB, 1),
            "outcomes": dict(outcomes),
            "seconds": round(time.monotonic() - start, 1),
        }
    )


# ---- gzip bombs ------------------------------------------------------------------------------


def gzip_bombs(
    registry_url: str, token: str, app: str, workers: int, duration_s: float, out: Any
) -> None:
    """`workers` clients with the app's deploy token, each uploading a new bomb (a distinct
    sha256, so no refusal is remembered) and asking for a release of it, until the deadline."""
    prefix = TarGz().add(*[p for n in range(BOMB_MEMBERS) for p in big_file(f"z{n}", BOMB_MEMBER)])
    deadline = time.monotonic() + duration_s
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    sizes: list[int] = []
    headers = {"Authorization": f"Bearer {token}"}

    def worker(w: int) -> None:
        n = 0
        with httpx.Client(base_url=registry_url, headers=headers, timeout=60) as client:
            while time.monotonic() < deadline:
                n += 1
                variant = prefix.copy().add(
                    *file(f"variant-{w}-{n}"), *file("Procfile", b"web: x\n")
                )
                bomb = variant.finish()
                sha = hashlib.sha256(bomb).hexdigest()
                try:
                    put = client.put(f"/v1/artifacts/{sha}", content=bomb)
                    with lock:
                        statuses[f"upload {put.status_code}"] += 1
                        sizes.append(len(bomb))
                    if put.status_code >= 300:
                        time.sleep(0.2)
                        continue
                    made = client.post(f"/v1/apps/{app}/releases", json={"artifact_sha256": sha})
                    with lock:
                        statuses[f"release {made.status_code}"] += 1
                except httpx.HTTPError as exc:
                    with lock:
                        statuses[f"error {type(exc).__name__}"] += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration_s + 120)
    out.put(
        {
            "bomb_mb": round(max(sizes, default=0) / MiB, 1),
            "expands_to_gib": BOMB_MEMBER * BOMB_MEMBERS / (1 << 30),
            "statuses": dict(statuses),
        }
    )
