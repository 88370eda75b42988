"""The request loop (tests/support/request_loop.py) aimed at a local cluster's frontend."""

from __future__ import annotations

import time

from cli.local import LocalCluster
from tests.support.request_loop import RequestLoop as _RequestLoop


class RequestLoop(_RequestLoop):
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
        url = f"https://127.0.0.1:{cluster.ports.https}{path}"
        super().__init__(url, host, expect=expect, pause_s=pause_s, max_s=max_s)


def sent_more(loop: _RequestLoop, count: int = 20, *, timeout_s: float = 30.0) -> None:
    """Wait until the loop has sent `count` more requests: a stretch of traffic observed
    (during a fault, after a change) measured in requests rather than a fixed sleep."""
    target = loop.sent + count
    deadline = time.monotonic() + timeout_s
    while loop.sent < target:
        assert time.monotonic() < deadline, f"the request loop stalled: {loop.summary()}"
        time.sleep(0.02)
