"""A bounded request loop through a frontend, in a thread, while a test causes a fault.

One loop for every test layer: the e2e tests (one local cluster, tests/e2e/request_loop.py)
and the multi-host tests (tests/system/multihost/traffic.py) adapt only how the URL is found.
Every answer is checked (status 200 and, when given, an expected text); anything else, a
refused or reset connection included, is a failure with its reason and the time it
happened. Keep-alive, as a browser would. Answers "host=<name>" are counted per host.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import TracebackType

import httpx


class RequestLoop:
    def __init__(
        self,
        url: str,
        host: str,
        *,
        expect: str | None = None,
        pause_s: float = 0.02,
        max_s: float = 300.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.host = host
        self.expect = expect
        self.pause_s = pause_s
        self.max_s = max_s
        self.timeout_s = timeout_s
        self.sent = 0
        self.failures: list[str] = []
        self.failed_at: list[float] = []  # time.monotonic() of each failure, same order
        self.bodies: Counter[str] = Counter()
        self.hosts: Counter[str] = Counter()  # answers "host=<name>", by name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"requests-{host}", daemon=True)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def failures_since(self, moment: float) -> list[str]:
        return [
            reason
            for at, reason in zip(self.failed_at, self.failures, strict=False)
            if at >= moment
        ]

    def summary(self) -> str:
        return (
            f"{self.sent} requests, {len(self.failures)} failed"
            f" (first: {self.failures[:3]}); answers: {dict(self.bodies)}"
        )

    def _fail(self, reason: str) -> None:
        self.failed_at.append(time.monotonic())
        self.failures.append(reason)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        headers = {"Host": self.host}
        with httpx.Client(verify=False, timeout=self.timeout_s) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.sent += 1
                try:
                    response = client.get(
                        self.url, headers=headers, extensions={"sni_hostname": self.host}
                    )
                except httpx.HTTPError as exc:
                    self._fail(f"{type(exc).__name__}: {exc}")
                else:
                    text = response.text.strip()
                    self.bodies[text] += 1
                    if text.startswith("host="):
                        self.hosts[text.removeprefix("host=")] += 1
                    if response.status_code != 200 or (
                        self.expect is not None and self.expect not in text
                    ):
                        self._fail(f"{response.status_code} {text[:120]!r}")
                self._stop.wait(self.pause_s)
