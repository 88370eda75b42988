"""A bounded request loop through the frontend, in a thread, while a test causes a fault.

Every answer is checked (status 200 and an expected text); anything else, a refused or
reset connection included, is a failure with its reason. Keep-alive, as a browser would.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import TracebackType

import httpx

from cli.local import LocalCluster


class RequestLoop:
    def __init__(
        self,
        cluster: LocalCluster,
        host: str,
        *,
        expect: str,
        path: str = "/",
        pause_s: float = 0.02,
        max_s: float = 300.0,
    ) -> None:
        self.url = f"https://127.0.0.1:{cluster.ports.https}{path}"
        self.host = host
        self.expect = expect
        self.pause_s = pause_s
        self.max_s = max_s
        self.sent = 0
        self.failures: list[str] = []
        self.bodies: Counter[str] = Counter()
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

    def summary(self) -> str:
        return (
            f"{self.sent} requests, {len(self.failures)} failed"
            f" (first: {self.failures[:3]}); answers: {dict(self.bodies)}"
        )

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        headers = {"Host": self.host}
        with httpx.Client(verify=False, timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.sent += 1
                try:
                    response = client.get(
                        self.url, headers=headers, extensions={"sni_hostname": self.host}
                    )
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    text = response.text.strip()
                    self.bodies[text] += 1
                    if response.status_code != 200 or self.expect not in text:
                        self.failures.append(f"{response.status_code} {text[:120]!r}")
                self._stop.wait(self.pause_s)
