"""The registry stops promptly while agents hold long-poll watches: SIGTERM (systemd's stop)
wakes every watch, which answers at once, and uvicorn exits without waiting out its graceful
timeout or cancelling a request (no CancelledError traceback in the log)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil

from controller.watch import LocalNotifier, wait_past
from tests.registry_proc import registry_process


def test_sigterm_answers_waiting_watches_and_exits_at_once(tmp_path: Path) -> None:
    with registry_process(tmp_path) as registry, httpx.Client(timeout=10) as client:
        token = registry.join("watcher", client)
        headers = {"Authorization": f"Bearer {token}"}
        first = client.get(f"{registry.url}/v1/hosts/watcher/desired", headers=headers)
        assert first.status_code == 200, first.text
        index = int(first.headers["X-Paas-Index"])
        answers: list[int] = []

        def watch() -> None:
            with httpx.Client(timeout=60) as watcher:
                answer = watcher.get(
                    f"{registry.url}/v1/hosts/watcher/desired",
                    params={"index": index, "wait": "60s"},
                    headers=headers,
                )
                answers.append(answer.status_code)

        watchers = [threading.Thread(target=watch) for _ in range(3)]
        for thread in watchers:
            thread.start()
        _until_connected(registry.pid, registry.port, count=3 + 1)  # + the client's
        started = time.monotonic()
        registry.proc.send_signal(signal.SIGTERM)
        registry.proc.wait(timeout=10)
        took = time.monotonic() - started
        for thread in watchers:
            thread.join(timeout=10)
        log = registry.log()
        assert answers == [200, 200, 200], (answers, log[-3000:])
        assert took < 1.5, f"stopping took {took:.2f}s\n{log[-3000:]}"
        assert "CancelledError" not in log and "Traceback" not in log, log[-3000:]
        assert "timeout graceful shutdown exceeded" not in log, log[-3000:]


def _until_connected(pid: int, port: int, *, count: int) -> None:
    """`count` client connections are open on the registry's port (the watches are in)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        open_ = [
            c
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        ]
        if len(open_) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} connections reached the registry")


def test_a_closed_notifier_answers_waiting_and_new_watches_at_once() -> None:
    async def scenario() -> tuple[int, int, float]:
        notifier = LocalNotifier()
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.create_task(wait_past(4, lambda: 4, notifier=notifier, wait_s=30))
        await asyncio.sleep(0.05)
        notifier.close()
        first = await waiting
        second = await wait_past(4, lambda: 4, notifier=notifier, wait_s=30)
        return first, second, loop.time() - started

    first, second, took = asyncio.run(scenario())
    assert (first, second) == (4, 4) and took < 1.0
