"""HTTP health checks of app instances: GET http://127.0.0.1:<port><path> with the app's Host.

Which answers pass depends on whether the app named a health path:
- the default path `/`: any answer below 500. A third-party app often has no page at `/`
  (404), or wants a login (401/403), and it still proves the process serves HTTP; only a
  server error or no answer fails.
- a configured path (`health_path = "/health"` in paas.toml): 2xx or 3xx, as the app
  promised that path answers when healthy.

The request carries the app's own domain as `Host`: frameworks that check it (Django's
ALLOWED_HOSTS) answer 400 to `Host: 127.0.0.1`. Redirects are not followed (a redirect to
the login page still means the app answers), and the timeout is short: a check that hangs is
a failed check.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx

from common.names import check_health_path

CHECK_TIMEOUT_S = 2.0
DEFAULT_HEALTH_PATH = "/"


def passes(status: int, path: str) -> bool:
    """The pass rule above: the default path accepts any non-5xx, a configured one 2xx/3xx."""
    if path == DEFAULT_HEALTH_PATH:
        return 100 <= status < 500
    return 200 <= status < 400


def check_host(domains: Sequence[str]) -> str | None:
    """The Host to send: the app's first exact domain (the cluster one comes first)."""
    return next((d for d in domains if not d.startswith("*")), None)


PROC_NET = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_LISTEN = "0A"


def listener_uids(port: int, *, tables: Sequence[Path] = PROC_NET) -> set[int]:
    """The uids owning a listening TCP socket on `port` (any address), from /proc/net/tcp:
    the agent routes a port only when its app's own uid is the one listening there."""
    uids: set[int] = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != TCP_LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                uids.add(int(fields[7]))
    return uids


class HealthChecker:
    """One pooled client for all checks; `transport` is injectable for tests."""

    def __init__(
        self,
        *,
        timeout_s: float = CHECK_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            transport=transport,
            # No keep-alive between checks: every check proves the app still accepts.
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,
        )

    async def check(self, port: int, path: str, *, host: str | None = None) -> tuple[bool, str]:
        """(passed, what happened) - the text ends up in the instance's error when it fails.

        `host` (an already validated domain) is sent as the Host header when given."""
        check_health_path(path)
        url = f"http://127.0.0.1:{int(port)}{path}"
        headers = {"User-Agent": "paas-health/1"}
        if host is not None:
            headers["Host"] = host
        shown = url if host is None else f"{url} (Host {host})"
        try:
            response = await self._client.get(url, headers=headers)
        except httpx.ConnectError as exc:
            # The usual cause: the web command listens on its own port (`flask run`: 5000).
            return False, (
                f"health check {shown} failed: nothing accepts connections on port {int(port)}"
                f" ({exc}); the web command must listen on $PORT (gunicorn reads it, uvicorn"
                " needs --port $PORT)"
            )
        except httpx.HTTPError as exc:
            return False, f"health check {shown} failed: {exc.__class__.__name__} {exc}".strip()
        status = response.status_code
        if passes(status, path):
            return True, f"health check {shown} answered {status}"
        rule = "below 500" if path == DEFAULT_HEALTH_PATH else "2xx or 3xx"
        return False, f"health check {shown} answered {status} (a pass is {rule})"

    async def aclose(self) -> None:
        await self._client.aclose()
