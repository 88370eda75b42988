"""HTTP health checks of app instances: GET http://127.0.0.1:<port><path> with the app's Host.

Which answers pass depends on whether the app named a health path:
- the default path `/`: any answer below 500. A third-party app often has no page at `/`
  (404), or wants a login (401/403), and it still proves the process serves HTTP; only a
  server error or no answer fails.
- a configured path (`health_path = "/health"` in paas.toml): 2xx or 3xx, as the app
  promised that path answers when healthy.

The request carries the app's own domain as `Host`: frameworks that check it (Django's
ALLOWED_HOSTS) answer 400 to `Host: 127.0.0.1`. Redirects are not followed (a redirect to
the login page still means the app answers).

Busy is not dead: a refused connection means nothing listens (`refused`),
but a check that times out may only wait behind a slow request of a single-worker app
(`timeout`); the agent then looks at the process and its socket before it calls it dead
(agent/machine/checks.py, agent/machine/run/supervisor.py `Verdict`). The timeout is per app
(DesiredInstance.health_check_timeout_s, default 5 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from common.names import check_health_path
from common.registry_tls import no_tls

CHECK_TIMEOUT_S = 5.0  # the default; each app may set its own (health_check_timeout_s)

Outcome = Literal["pass", "fail", "refused", "timeout"]


@dataclass(frozen=True)
class CheckResult:
    outcome: Outcome
    detail: str  # ends up in the instance's error when it fails

    @property
    def ok(self) -> bool:
        return self.outcome == "pass"


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
            verify=no_tls(),  # checks are plain http:// to 127.0.0.1
        )

    async def check(self, port: int, path: str, *, host: str | None = None) -> tuple[bool, str]:
        """(passed, what happened) - the text ends up in the instance's error when it fails."""
        result = await self.probe(port, path, host=host)
        return result.ok, result.detail

    async def probe(
        self, port: int, path: str, *, host: str | None = None, timeout_s: float | None = None
    ) -> CheckResult:
        """One check; `host` (an already validated domain) is sent as the Host header when
        given, `timeout_s` overrides the client's timeout."""
        check_health_path(path)
        url = f"http://127.0.0.1:{int(port)}{path}"
        headers = {"User-Agent": "paas-health/1"}
        if host is not None:
            headers["Host"] = host
        shown = url if host is None else f"{url} (Host {host})"
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else httpx.Timeout(timeout_s)
        try:
            response = await self._client.get(url, headers=headers, timeout=timeout)
        except httpx.ConnectError as exc:
            # The usual cause: the web command listens on its own port (`flask run`: 5000).
            return CheckResult(
                "refused",
                (
                    f"health check {shown} failed: nothing accepts connections on port {int(port)}"
                    f" ({exc}); the web command must listen on $PORT (gunicorn reads it, uvicorn"
                    " needs --port $PORT)"
                ),
            )
        except httpx.TimeoutException as exc:
            return CheckResult(
                "timeout", f"health check {shown} got no answer: {exc.__class__.__name__}"
            )
        except httpx.HTTPError as exc:
            text = f"health check {shown} failed: {exc.__class__.__name__} {exc}".strip()
            return CheckResult("fail", text)
        status = response.status_code
        if passes(status, path):
            return CheckResult("pass", f"health check {shown} answered {status}")
        rule = "below 500" if path == DEFAULT_HEALTH_PATH else "2xx or 3xx"
        return CheckResult("fail", f"health check {shown} answered {status} (a pass is {rule})")

    async def aclose(self) -> None:
        await self._client.aclose()
