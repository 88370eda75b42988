"""One-off runs (`paas run APP -- CMD ARGS`): a command in a release's environment, streamed.

The argv is executed as given (never through a shell), in the release's unpacked folder,
with its venv on PATH and its config vars, as the app's own uid and in its cgroups (like
its instances: agent/privexec.py), in its own session. It is not routed (no PORT). It is
killed (its whole process group) when the time limit passes or when the caller goes away
(the generator is closed or cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from agent import procs

log = logging.getLogger(__name__)

TIMEOUT_EXIT = 124  # what coreutils' timeout(1) returns
READ_CHUNK = 8192


async def run_streaming(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout_s: float,
    user: procs.AppUser | None = None,
) -> AsyncIterator[dict[str, object]]:
    """Yield {"stream": "stdout"|"stderr", "data": text} as output comes, then {"exit": code}
    (and "error" when it could not start or timed out)."""
    try:
        proc = await procs.spawn_piped(argv, env=env, cwd=cwd, user=user)
    except procs.ProcessError as exc:
        yield {"error": str(exc), "exit": 127}
        return
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    readers = [
        asyncio.create_task(_pump("stdout", proc.stdout, queue)),  # type: ignore[arg-type]
        asyncio.create_task(_pump("stderr", proc.stderr, queue)),  # type: ignore[arg-type]
    ]
    deadline = time.monotonic() + timeout_s
    open_streams = 2
    timed_out = False
    try:
        while open_streams:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            try:
                stream, data = await asyncio.wait_for(queue.get(), timeout=left)
            except TimeoutError:
                timed_out = True
                break
            if not data:
                open_streams -= 1
                continue
            yield {"stream": stream, "data": data.decode(errors="replace")}
        if timed_out:
            procs.signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            yield {"error": f"timed out after {timeout_s:g}s; killed", "exit": TIMEOUT_EXIT}
            return
        code = await proc.wait()
        yield {"exit": code if code >= 0 else 128 - code}
    finally:
        if proc.returncode is None:
            log.info("one-off run %s ended early (caller gone); killing it", argv[0])
            procs.signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), timeout=5)
        for task in readers:
            task.cancel()


async def _pump(name: str, reader: asyncio.StreamReader, queue: asyncio.Queue) -> None:
    while True:
        data = await reader.read(READ_CHUNK)
        await queue.put((name, data))
        if not data:
            return
