"""Typed client of the registry API (docs/api.md); every response is parsed with common.wire.

Transport failures and error statuses become `cli.errors` exceptions here, at the boundary,
so the commands never see an httpx exception.

The registry URL may list several replicas (`http://a:8070,http://b:8070`): a request that
cannot reach one goes to the next (common/failover.py says which requests may be repeated).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from cli import config
from cli.errors import ApiError, ConfigError, RegistryUnreachable
from common.failover import UrlRing, retry_status, retry_transport_error
from common.registry_tls import RegistryTrust, RegistryTrustError, sync_transport
from common.wire import (
    AcmeStatus,
    App,
    AppCreate,
    Artifact,
    Cert,
    ConfigUpdate,
    ConfigVars,
    Host,
    InstanceView,
    Release,
    ReleaseCreate,
    RollbackRequest,
    RouteOptions,
    RouteOptionsUpdate,
)

T = TypeVar("T")
INDEX_HEADER = "X-Paas-Index"
UPLOAD_CHUNK = 1 << 16


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "refused" in text.lower():
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    # httpx wraps OS errors as "[Errno 111] Connection refused": keep the words only.
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text).strip()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI's default validation shape
        parts = []
        for item in detail:
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        return "; ".join(parts)
    return str(body)[:500]


def registry_transport(
    registries: UrlRing, trust: RegistryTrust | None, *, insecure_http: bool | None = None
) -> httpx.BaseTransport:
    """The verified transport (common/registry_tls.py) for these URLs; a refusal -> ConfigError."""
    allow = config.insecure_http() if insecure_http is None else insecure_http
    try:
        return sync_transport(registries.urls, trust or RegistryTrust(), insecure_http=allow)
    except RegistryTrustError as exc:
        raise ConfigError(str(exc)) from exc


class RegistryClient:
    """One registry (or its replicas), one token. Pass `transport` in tests instead of patching.

    Without one, the transport checks the URLs and verifies TLS by `trust` (a CA file or the
    pinned fingerprint), so the token is never sent in clear or to an impostor."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        trust: RegistryTrust | None = None,
    ) -> None:
        try:
            self.registries = UrlRing(base_url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if transport is None:
            transport = registry_transport(self.registries, trust)
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=timeout,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        """The replica in use (the last one that answered)."""
        return self.registries.current

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing ----------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._send(method, path, **kwargs)
        if response.status_code == 401:
            raise ApiError("the registry refused the token (401); run paas login", status=401)
        if response.status_code >= 400 and not (method == "HEAD" and response.status_code == 404):
            raise ApiError(
                f"{_detail(response)} ({response.status_code})", status=response.status_code
            )
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """To the replica in use, else the next ones; a streamed body is never sent twice."""
        attempts = self.registries.attempts()
        streamed = "content" in kwargs and not isinstance(kwargs["content"], bytes | str)
        failures = []
        for position, index in enumerate(attempts):
            url = self.registries.urls[index]
            more = position + 1 < len(attempts)
            try:
                response = self._http.request(method, f"{url}{path}", **kwargs)
            except httpx.TransportError as exc:
                failures.append(f"{url}: {_reason(exc)}")
                if (
                    more
                    and retry_transport_error(exc, method, idempotent=False)
                    and not (
                        streamed and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                    )
                ):
                    continue
                where = "; ".join(failures)
                raise RegistryUnreachable(f"cannot reach the registry at {where}") from exc
            if (
                more
                and retry_status(response.status_code, method, idempotent=False)
                and not streamed
            ):
                failures.append(f"{url}: answered {response.status_code}")
                continue
            self.registries.settle(index)
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _parse(self, response: httpx.Response, model: type[T] | Any) -> T:
        try:
            return TypeAdapter(model).validate_json(response.content)
        except ValidationError as exc:
            raise ApiError(
                f"the registry sent an unexpected answer to {response.request.url.path}: "
                f"{exc.errors()[0].get('msg', exc)}",
                status=response.status_code,
            ) from exc

    # ---- routes ------------------------------------------------------------------------

    def health(self) -> bool:
        response = self._request("GET", "/v1/health")
        return bool(response.json().get("ok"))

    def list_apps(self) -> list[App]:
        return self._parse(self._request("GET", "/v1/apps"), list[App])

    def get_app(self, name: str) -> App:
        return self._parse(self._request("GET", f"/v1/apps/{name}"), App)

    def find_app(self, name: str) -> App | None:
        try:
            return self.get_app(name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create_app(self, spec: AppCreate) -> App:
        body = spec.model_dump(mode="json")
        return self._parse(self._request("POST", "/v1/apps", json=body), App)

    def delete_app(self, name: str) -> None:
        self._request("DELETE", f"/v1/apps/{name}")

    def has_artifact(self, sha256: str) -> bool:
        return self._request("HEAD", f"/v1/artifacts/{sha256}").status_code == 200

    def upload_artifact(self, sha256: str, path: Path) -> Artifact:
        def chunks() -> Iterator[bytes]:
            with path.open("rb") as fh:
                while block := fh.read(UPLOAD_CHUNK):
                    yield block

        response = self._request(
            "PUT",
            f"/v1/artifacts/{sha256}",
            content=chunks(),
            headers={
                "Content-Type": "application/gzip",
                "Content-Length": str(path.stat().st_size),
            },
            timeout=300.0,
        )
        return self._parse(response, Artifact)

    def create_release(self, app: str, sha256: str) -> Release:
        body = ReleaseCreate(artifact_sha256=sha256).model_dump(mode="json")
        return self._parse(self._request("POST", f"/v1/apps/{app}/releases", json=body), Release)

    def rollback(self, app: str, version: int | None = None) -> Release:
        """A new release with the code and config of `version` (default: the one before)."""
        body = RollbackRequest(version=version).model_dump(mode="json")
        return self._parse(self._request("POST", f"/v1/apps/{app}/rollback", json=body), Release)

    def list_releases(self, app: str) -> list[Release]:
        return self._parse(self._request("GET", f"/v1/apps/{app}/releases"), list[Release])

    def watch_release(
        self, app: str, version: int, *, index: int = 0, wait_s: int = 30
    ) -> tuple[Release, int]:
        """A blocking query: returns when the registry's `seq` passes `index` or wait ends."""
        params = {"index": str(index), "wait": f"{wait_s}s"} if index else {}
        response = self._request(
            "GET",
            f"/v1/apps/{app}/releases/{version}",
            params=params,
            timeout=httpx.Timeout(10.0, read=wait_s + 15.0),
        )
        return self._parse(response, Release), _index(response, index)

    def list_instances(self, app: str) -> list[InstanceView]:
        return self._parse(self._request("GET", f"/v1/apps/{app}/instances"), list[InstanceView])

    def scale_app(self, name: str, counts: dict[str, int]) -> App:
        """Instances per process type (`{"web": 3, "worker": 2}`)."""
        response = self._request("PATCH", f"/v1/apps/{name}", json={"process_counts": counts})
        return self._parse(response, App)

    def list_hosts(self) -> list[Host]:
        return self._parse(self._request("GET", "/v1/hosts"), list[Host])

    def add_domain(self, app: str, domain: str) -> App:
        response = self._request("POST", f"/v1/apps/{app}/domains", json={"domain": domain})
        return self._parse(response, App)

    def remove_domain(self, app: str, domain: str) -> App:
        return self._parse(self._request("DELETE", f"/v1/apps/{app}/domains/{domain}"), App)

    def add_cert(self, app: str, cert_pem: str, key_pem: str) -> Cert:
        body = {"cert_pem": cert_pem, "key_pem": key_pem}
        return self._parse(self._request("POST", f"/v1/apps/{app}/certs", json=body), Cert)

    def list_certs(self, app: str) -> list[Cert]:
        return self._parse(self._request("GET", f"/v1/apps/{app}/certs"), list[Cert])

    def remove_cert(self, app: str, sha256: str) -> None:
        self._request("DELETE", f"/v1/apps/{app}/certs/{sha256}")

    def add_acme(self, app: str, domain: str) -> AcmeStatus:
        response = self._request("POST", f"/v1/apps/{app}/certs/acme", json={"domain": domain})
        return self._parse(response, AcmeStatus)

    def list_acme(self, app: str) -> list[AcmeStatus]:
        return self._parse(self._request("GET", f"/v1/apps/{app}/certs/acme"), list[AcmeStatus])

    def remove_acme(self, app: str, domain: str) -> None:
        self._request("DELETE", f"/v1/apps/{app}/certs/acme/{domain}")

    def get_routing(self, app: str) -> RouteOptions:
        return self._parse(self._request("GET", f"/v1/apps/{app}/routing"), RouteOptions)

    def update_routing(self, app: str, change: RouteOptionsUpdate) -> RouteOptions:
        body = change.model_dump(mode="json", exclude_none=True)
        response = self._request("PATCH", f"/v1/apps/{app}/routing", json=body)
        return self._parse(response, RouteOptions)

    # ---- config vars -----------------------------------------------------------------------

    def get_config(self, app: str, *, reveal: bool = False) -> ConfigVars:
        params = {"reveal": "true"} if reveal else {}
        return self._parse(
            self._request("GET", f"/v1/apps/{app}/config", params=params), ConfigVars
        )

    def update_config(self, app: str, update: ConfigUpdate) -> ConfigVars:
        body = update.model_dump(mode="json")
        return self._parse(self._request("PATCH", f"/v1/apps/{app}/config", json=body), ConfigVars)

    def force_delete_app(self, name: str) -> None:
        """Delete even when other apps depend on it."""
        self._request("DELETE", f"/v1/apps/{name}", params={"force": "true"})


def _index(response: httpx.Response, previous: int) -> int:
    try:
        return int(response.headers.get(INDEX_HEADER, previous))
    except ValueError:
        return previous


def dump(value: BaseModel | list[BaseModel] | dict[str, Any]) -> Any:
    """JSON-ready form of wire models (and dicts/lists of them) for `--json` output."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value
