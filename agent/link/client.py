"""The agent's only way to talk to the registry: typed, async, transport injectable for tests.

Every httpx error is translated into RegistryCallFailed here, so the agents' loops handle one
family: `retryable` tells an outage (back off and keep serving) from a refusal (log it).
Joining (agent/link/join.py), watching (watch.py) and reporting (reporter.py) build on it.

`base_url` may list several registry replicas (comma-separated): a request that cannot reach
one goes to the next at once (common/failover.py), and a watch resumes there with its index.

An https:// registry is verified by the settings' CA file or pinned certificate fingerprint
on every connection, and http:// is refused off loopback (common/registry_tls.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from agent.errors import ArtifactMismatch, RegistryCallFailed
from agent.settings import AgentSettings
from common.failover import IDEMPOTENT, AsyncFailoverTransport, UrlRing, attempts_of
from common.names import check_host_name, check_sha256
from common.registry_tls import RegistryTrust, async_transport
from common.wire import (
    DesiredState,
    ErrorBody,
    HostJoin,
    HostJoined,
    HostReport,
    RoutingTable,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# Headroom over the server-side wait, so a blocking query ends on the registry's side first.
WATCH_GRACE_S = 10.0
REQUEST_TIMEOUT_S = 10.0


class RegistryClient:
    """Async client for the registry API (docs/api.md), one per agent."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        trust: RegistryTrust | None = None,
        insecure_http: bool = False,
    ) -> None:
        self.registries = UrlRing(base_url)
        self.token = token
        if transport is None:  # tests pass their own; real ones check URLs and verify TLS
            transport = async_transport(
                self.registries.urls, trust or RegistryTrust(), insecure_http=insecure_http
            )
        self._http = httpx.AsyncClient(
            base_url=self.registries.urls[0],  # each request goes to a replica in turn
            transport=AsyncFailoverTransport(self.registries, transport, log=log),
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
            follow_redirects=False,
        )

    @classmethod
    def for_settings(
        cls, settings: AgentSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> RegistryClient:
        """The agent's client: its registry URL(s), trusted as its settings say."""
        return cls(
            settings.registry_url,
            transport=transport,
            trust=settings.registry_trust,
            insecure_http=settings.registry_insecure_http,
        )

    @property
    def base_url(self) -> str:
        """The replica in use (the last one that answered)."""
        return self.registries.current

    # ---- API --------------------------------------------------------------------------

    async def join(self, req: HostJoin, *, join_token: str) -> HostJoined:
        response = await self._request(
            "POST", "/v1/hosts/join", token=join_token, json=req.model_dump(mode="json")
        )
        return _parse(HostJoined, response)

    async def desired(self, host: str, *, index: int, wait_s: float) -> DesiredState:
        check_host_name(host)
        response = await self._watch(f"/v1/hosts/{host}/desired", index=index, wait_s=wait_s)
        return _parse(DesiredState, response)

    async def routing(self, *, index: int, wait_s: float) -> RoutingTable:
        response = await self._watch("/v1/routing", index=index, wait_s=wait_s)
        return _parse(RoutingTable, response)

    async def report(self, host: str, report: HostReport) -> int | None:
        """Send a status report; returns the registry's desired index (None: not given)."""
        check_host_name(host)
        response = await self._request(
            "POST",
            f"/v1/hosts/{host}/report",
            json=report.model_dump(mode="json"),
            idempotent=True,  # a report states the host's state: sending it twice is harmless
        )
        value = response.headers.get("X-Paas-Index", "")
        return int(value) if value.isdigit() else None

    async def download_artifact(self, sha256: str, dest: Path) -> None:
        """Stream to a temp file beside `dest`, verify the sha256, then rename into place."""
        check_sha256(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{random.randrange(1 << 30)}.part")
        digest = hashlib.sha256()
        try:
            # The transport moves on when a replica cannot be reached or is unavailable; a
            # body cut off half-way is fetched again, whole, from the next replica.
            count = len(self.registries.urls)
            for attempt in range(count):
                digest = hashlib.sha256()
                try:
                    async with self._http.stream(
                        "GET",
                        f"/v1/artifacts/{sha256}",
                        headers=self._auth(self.token),
                        timeout=httpx.Timeout(REQUEST_TIMEOUT_S, read=60.0),
                        extensions={IDEMPOTENT: True},
                    ) as response:
                        if response.status_code >= 400:
                            await response.aread()
                            raise _status_error(response)
                        with tmp.open("wb") as out:
                            async for chunk in response.aiter_bytes(1 << 16):
                                digest.update(chunk)
                                out.write(chunk)
                            out.flush()
                            os.fsync(out.fileno())
                    break
                except httpx.HTTPError as exc:
                    url = self._where(exc)
                    if attempt + 1 < count and not attempts_of(exc):
                        log.warning("artifact download from %s failed (%s); next replica", url, exc)
                        self.registries.advance()
                        continue
                    raise RegistryCallFailed(
                        f"artifact {sha256[:12]} download failed: {exc}"
                    ) from exc
            if digest.hexdigest() != sha256:
                raise ArtifactMismatch(
                    f"artifact {sha256[:12]} arrived with sha256 {digest.hexdigest()[:12]};"
                    " refused it"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- plumbing ---------------------------------------------------------------------

    async def _watch(self, path: str, *, index: int, wait_s: float) -> httpx.Response:
        wait_ms = max(0, int(wait_s * 1000))
        return await self._request(
            "GET",
            path,
            params={"index": str(max(0, index)), "wait": f"{wait_ms}ms"},
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, read=wait_s + WATCH_GRACE_S),
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: object | None = None,
        params: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        idempotent: bool = False,
    ) -> httpx.Response:
        """Send to the replica in use; the transport moves on to the next (see the module doc)."""
        headers = self._auth(token if token is not None else self.token)
        try:
            response = await self._http.request(
                method,
                path,
                json=json,
                params=params,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                extensions={IDEMPOTENT: idempotent},
            )
        except httpx.HTTPError as exc:
            raise RegistryCallFailed(
                f"registry {self._where(exc)} unreachable ({method} {path}): {exc!r}"
            ) from exc
        if response.status_code >= 400:
            raise _status_error(response)  # the replica answered: the refusal is its answer
        return response

    def _where(self, exc: httpx.HTTPError) -> str:
        """The replica a failed request was last sent to."""
        tried = attempts_of(exc)
        return tried[-1].url if tried else self.registries.current

    @staticmethod
    def _auth(token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}


def _status_error(response: httpx.Response) -> RegistryCallFailed:
    detail = response.text[:500]
    with contextlib.suppress(ValidationError):
        detail = ErrorBody.model_validate_json(response.content).detail
    request = response.request
    return RegistryCallFailed(
        f"registry answered {response.status_code} to {request.method} {request.url.path}:"
        f" {detail}",
        status=response.status_code,
    )


def _parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise RegistryCallFailed(
            f"registry sent an invalid {model.__name__} for {response.request.url.path}: {exc}",
            status=response.status_code,
        ) from exc
