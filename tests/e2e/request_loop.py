"""The request loop (tests/support/request_loop.py) aimed at a local cluster's frontend."""

from __future__ import annotations

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
