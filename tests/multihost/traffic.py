"""Requests through the frontend: one-off ones, and a steady loop in a thread that records
which host answered each request and every failure with the time it happened."""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import TracebackType

import httpx

from tests.multihost.cluster import MultiHostCluster


def get(cluster: MultiHostCluster, app: str, path: str = "/") -> httpx.Response:
    host = f"{app}.{cluster.domain}"
    with httpx.Client(verify=False, timeout=5) as client:
        return client.get(
            f"{cluster.https_url}{path}", headers={"Host": host}, extensions={"sni_hostname": host}
        )


def answering_hosts(cluster: MultiHostCluster, app: str, *, tries: int = 30) -> Counter[str]:
    """Which hosts answered `tries` requests (the app answers "host=<name>")."""
    seen: Counter[str] = Counter()
    for _ in range(tries):
        try:
            response = get(cluster, app)
        except httpx.HTTPError as exc:
            seen[f"error: {type(exc).__name__}"] += 1
            continue
        text = response.text.strip()
        seen[
            text.removeprefix("host=") if response.status_code == 200 else f"{response.status_code}"
        ] += 1
    return seen


class Loop:
    """A bounded request loop (keep-alive, as a browser would) until stopped."""

    def __init__(self, cluster: MultiHostCluster, app: str, *, pause_s: float = 0.02) -> None:
        self.url = cluster.https_url + "/"
        self.host = f"{app}.{cluster.domain}"
        self.pause_s = pause_s
        self.sent = 0
        self.failures: list[tuple[float, str]] = []  # (monotonic time, reason)
        self.hosts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="multihost-loop", daemon=True)

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def failures_since(self, moment: float) -> list[str]:
        return [reason for at, reason in self.failures if at >= moment]

    def _run(self) -> None:
        deadline = time.monotonic() + 300
        headers = {"Host": self.host}
        with httpx.Client(verify=False, timeout=5) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.sent += 1
                try:
                    response = client.get(
                        self.url, headers=headers, extensions={"sni_hostname": self.host}
                    )
                except httpx.HTTPError as exc:
                    self.failures.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                else:
                    text = response.text.strip()
                    if response.status_code == 200 and text.startswith("host="):
                        self.hosts[text.removeprefix("host=")] += 1
                    else:
                        self.failures.append(
                            (time.monotonic(), f"{response.status_code} {text[:80]!r}")
                        )
                self._stop.wait(self.pause_s)
