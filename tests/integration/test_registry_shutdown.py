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

from controller.sync.watch import LocalNotifier, wait_past
from tests.support.registry_proc import registry_process


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


def test_sigterm_over_tls_does_not_wait_for_idle_clients_close_notify(tmp_path: Path) -> None:
    """An idle pooled TLS connection (the CLI's, an agent's) never answers the registry's
    close_notify: asyncio would hold it 30 s and uvicorn would sit out its whole graceful
    wait (seen as a 3.2 s stop under systemd). The closing handshake is bounded."""
    import subprocess

    from tests.conftest import free_port
    from tests.support.certgen import issue
    from tests.support.registry_proc import BIN

    leaf = issue("registry.test", names=["registry.test"])
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text(leaf.cert_pem)
    key.write_text(leaf.key_pem)
    state = tmp_path / "registry"
    init = [str(BIN / "paas-registry"), "init", "--state-dir", str(state), "--json"]
    assert subprocess.run(init, capture_output=True, timeout=60).returncode == 0
    port = free_port()
    log_path = tmp_path / "registry.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "paas-registry"), "serve", "--state-dir", str(state), "--host",
             "127.0.0.1", "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with httpx.Client(verify=False, timeout=2) as idle:  # keeps its connection pooled
            deadline = time.monotonic() + 30
            while True:
                try:
                    if idle.get(f"https://127.0.0.1:{port}/v1/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the registry did not start"
                time.sleep(0.1)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            took = time.monotonic() - started
        text = log_path.read_text()
        assert "timeout graceful shutdown exceeded" not in text, (took, text[-2000:])
        assert "Traceback" not in text, text[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
