"""A small client for the operations routes (tokens, audit, logs, runs), streams included.

It reads the same login as the rest of the CLI (a registry URL, or a comma-separated list of
replicas, tried by the rules of common/failover.py) and turns transport failures and error statuses
into `cli.errors` exceptions at this boundary, like cli/api.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from cli import config
from cli.api import _detail, _reason, registry_transport
from cli.errors import ApiError, ConfigError, RegistryUnreachable
from common.failover import UrlRing, retry_status, retry_transport_error
from common.registry_tls import RegistryTrust


class OpsClient:
    def __init__(
        self,
        registry_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        trust: RegistryTrust | None = None,
    ) -> None:
        try:
            self.registries = UrlRing(registry_url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if transport is None:
            transport = registry_transport(self.registries, trust)
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, read=None),
            transport=transport,
            trust_env=False,
        )

    @classmethod
    def from_login(cls) -> OpsClient:
        login = config.load()
        return cls(login.registry_url, login.token, trust=login.trust())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _open(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """The first replica that answers (common/failover.py's rules: a run is sent again
        elsewhere only if it cannot have reached the first); an error status -> ApiError."""
        failures: list[str] = []
        answered: ApiError | None = None  # the last replica that answered, with an error
        for index in self.registries.attempts():
            url = self.registries.urls[index]
            request = self._http.build_request(method, url + path, **kwargs)
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                failures.append(f"{url}: {_reason(exc)}")
                if retry_transport_error(exc, method, idempotent=False):
                    continue
                break
            if retry_status(response.status_code, method, idempotent=False):
                response.read()
                response.close()
                answered = ApiError(
                    f"{_detail(response)} ({response.status_code})", status=response.status_code
                )
                failures.append(f"{url}: {answered}")
                continue
            self.registries.settle(index)
            try:
                if response.status_code == 401:
                    raise ApiError(
                        "the registry refused the token (401); run paas login", status=401
                    )
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(
                        f"{_detail(response)} ({response.status_code})",
                        status=response.status_code,
                    )
                yield response
            finally:
                response.close()
            return
        if answered is not None:
            raise answered
        raise RegistryUnreachable("cannot reach the registry: " + "; ".join(failures))

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._open(method, path, **kwargs) as response:
            response.read()
            return response.json() if response.content else None

    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """NDJSON objects as they arrive (blank keep-alive lines skipped)."""
        with self._open(method, path, **kwargs) as response:
            try:
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
            except httpx.TransportError as exc:
                raise RegistryUnreachable(f"the stream broke off: {_reason(exc)}") from exc
