"""HTTP health checks of app instances: GET http://127.0.0.1:<port><path>, 2xx/3xx passes.

Redirects are not followed (a redirect to the login page still means the app answers), and
the timeout is short: a check that hangs is a failed check.
"""

from __future__ import annotations

import httpx

from common.names import check_health_path

CHECK_TIMEOUT_S = 2.0


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

    async def check(self, port: int, path: str) -> tuple[bool, str]:
        """(passed, what happened) - the text ends up in the instance's error when it fails."""
        check_health_path(path)
        url = f"http://127.0.0.1:{int(port)}{path}"
        try:
            response = await self._client.get(url, headers={"User-Agent": "paas-health/1"})
        except httpx.HTTPError as exc:
            return False, f"health check {url} failed: {exc.__class__.__name__} {exc}".strip()
        if 200 <= response.status_code < 400:
            return True, f"health check {url} answered {response.status_code}"
        return False, f"health check {url} answered {response.status_code}"

    async def aclose(self) -> None:
        await self._client.aclose()
