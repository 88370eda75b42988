"""Requests through the frontend: one-off ones, and the shared steady loop
(tests/support/request_loop.py) that records which host answered each request and every
failure with the time it happened."""

from __future__ import annotations

from collections import Counter

import httpx

from tests.support.request_loop import RequestLoop
from tests.system.multihost.cluster import MultiHostCluster


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


class Loop(RequestLoop):
    """The shared request loop (tests/support/request_loop.py) aimed at `app` on this cluster's
    frontend; every 200 answer counts for the host it names."""

    def __init__(self, cluster: MultiHostCluster, app: str, *, pause_s: float = 0.02) -> None:
        host = f"{app}.{cluster.domain}"
        super().__init__(cluster.https_url + "/", host, pause_s=pause_s, timeout_s=5.0)
