"""Typed client of the registry API (docs/api.md); every response is parsed with common.wire.

Transport failures and error statuses become `cli.errors` exceptions here, at the boundary,
so the commands never see an httpx exception. Streams (logs, one-off runs, data export) are
read as they arrive.

The registry URL may list several replicas (`http://a:8070,http://b:8070`): a request that
cannot reach one goes to the next (common/failover.py's transport says which may be repeated).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from cli import config
from cli.errors import ApiError, ConfigError, RegistryUnreachable
from common.failover import FailoverTransport, UrlRing, attempts_of
from common.registry_tls import RegistryTrust, RegistryTrustError, sync_transport
from common.wire import (
    AcmeStatus,
    App,
    AppCreate,
    AppDeleted,
    Artifact,
    AuditEntry,
    Cert,
    ConfigUpdate,
    ConfigVars,
    DataImported,
    Host,
    InstanceView,
    LogEvent,
    Release,
    ReleaseCreate,
    RollbackRequest,
    RouteOptions,
    RouteOptionsUpdate,
    RunEvent,
    StreamEvent,
    TokenCreated,
    TokenInfo,
)

T = TypeVar("T")
E = TypeVar("E", bound=StreamEvent)
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


def _unreachable(exc: httpx.TransportError) -> RegistryUnreachable:
    """`cannot reach the registry at A: connection refused; B: answered 503`."""
    tried = attempts_of(exc)
    where = "; ".join(
        f"{a.url}: {f'answered {a.failure}' if isinstance(a.failure, int) else _reason(a.failure)}"
        for a in tried
    )
    if not where:
        return RegistryUnreachable(f"cannot reach the registry: {_reason(exc)}")
    return RegistryUnreachable(f"cannot reach the registry at {where}")


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
    pinned fingerprint), so the token is never sent in clear or to an impostor. Proxies from
    the environment are not used: they would bypass that verification."""

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
        self._timeout = timeout
        # Operations may take long on the hosts' side (a data delete, an import): no read limit.
        self._patient = httpx.Timeout(timeout, read=None)
        self._http = httpx.Client(
            base_url=self.registries.urls[0],  # each request goes to a replica in turn
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=timeout,
            transport=FailoverTransport(self.registries, transport),
            trust_env=False,
        )

    @classmethod
    def from_login(cls) -> RegistryClient:
        """The client of the saved login (`paas login`) or the PAAS_* environment."""
        login = config.load()
        return cls(login.registry_url, login.token, trust=login.trust())

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
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc
        _check(response, method)
        return response

    @contextmanager
    def _open(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A response whose body is read as it arrives; no read timeout (a followed log may
        stay quiet for hours). A connection lost while reading: RegistryUnreachable."""
        kwargs.setdefault("timeout", self._patient)
        with ExitStack() as stack:
            try:
                response = stack.enter_context(self._http.stream(method, path, **kwargs))
                if response.status_code >= 400:
                    response.read()
            except httpx.TransportError as exc:
                raise _unreachable(exc) from exc
            _check(response, method)
            try:
                yield response
            except httpx.TransportError as exc:
                raise RegistryUnreachable(f"the stream broke off: {_reason(exc)}") from exc

    def _events(self, model: type[E], method: str, path: str, **kwargs: Any) -> Iterator[E]:
        """NDJSON objects as they arrive (blank keep-alive lines skipped)."""
        with self._open(method, path, **kwargs) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield self._parse(response, model, line)

    def _parse(self, response: httpx.Response, model: type[T] | Any, text: str | None = None) -> T:
        """The response's body (or `text`, one line of a stream) as `model`."""
        try:
            return TypeAdapter(model).validate_json(response.content if text is None else text)
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

    def delete_app_and_data(self, name: str, *, force: bool = False) -> AppDeleted:
        """Delete the app and ask every host to remove its data folders."""
        params = {"delete_data": "true", **({"force": "true"} if force else {})}
        response = self._request("DELETE", f"/v1/apps/{name}", params=params, timeout=self._patient)
        return self._parse(response, AppDeleted) if response.content else AppDeleted()

    # ---- operations: tokens, audit, hosts, logs, runs, data -----------------------------

    def list_tokens(self) -> list[TokenInfo]:
        response = self._request("GET", "/v1/tokens", timeout=self._patient)
        return self._parse(response, list[TokenInfo])

    def create_token(
        self, scope: str, *, app: str | None, name: str | None, domains: list[str]
    ) -> TokenCreated:
        body = {"scope": scope, "app": app, "name": name, "domains": domains}
        response = self._request("POST", "/v1/tokens", json=body, timeout=self._patient)
        return self._parse(response, TokenCreated)

    def revoke_token(self, token_id: int) -> None:
        self._request("DELETE", f"/v1/tokens/{token_id}", timeout=self._patient)

    def list_audit(
        self, *, app: str | None = None, since: str | None = None, limit: int = 200
    ) -> list[AuditEntry]:
        params: dict[str, Any] = {"limit": limit}
        if app is not None:
            params["app"] = app
        if since is not None:
            params["since"] = since
        response = self._request("GET", "/v1/audit", params=params, timeout=self._patient)
        return self._parse(response, list[AuditEntry])

    def remove_host(self, name: str) -> None:
        self._request("DELETE", f"/v1/hosts/{name}", timeout=self._patient)

    def logs(self, app: str, params: dict[str, Any]) -> Iterator[LogEvent]:
        """The app's log lines from every host, as they come (`follow` keeps it open)."""
        return self._events(LogEvent, "GET", f"/v1/apps/{app}/logs", params=params)

    def run(
        self, app: str, argv: list[str], *, host: str | None = None, timeout_s: float | None
    ) -> Iterator[RunEvent]:
        """A one-off command's output as it comes, then its exit status. Never sent to a
        second replica once it may have started."""
        body: dict[str, Any] = {"argv": argv, "timeout_s": timeout_s}
        if host is not None:
            body["host"] = host
        return self._events(RunEvent, "POST", f"/v1/apps/{app}/run", json=body)

    @contextmanager
    def export_data(self, app: str) -> Iterator[tuple[str, Iterator[bytes]]]:
        """(the host that holds the data, the tar.gz's bytes as they arrive)."""
        with self._open("GET", f"/v1/apps/{app}/data") as response:
            yield response.headers.get("x-paas-host", "?"), response.iter_raw()

    def import_data(self, app: str, archive: bytes) -> DataImported:
        response = self._request(
            "PUT",
            f"/v1/apps/{app}/data",
            content=archive,
            headers={"content-type": "application/gzip"},
            timeout=self._patient,
        )
        return self._parse(response, DataImported)


def _check(response: httpx.Response, method: str) -> None:
    """An error status -> ApiError with the registry's own words (a HEAD's 404 is an answer)."""
    if response.status_code == 401:
        raise ApiError("the registry refused the token (401); run paas login", status=401)
    if response.status_code >= 400 and not (method == "HEAD" and response.status_code == 404):
        raise ApiError(f"{_detail(response)} ({response.status_code})", status=response.status_code)


def _index(response: httpx.Response, previous: int) -> int:
    try:
        return int(response.headers.get(INDEX_HEADER, previous))
    except ValueError:
        return previous


def dump(value: BaseModel | Sequence[BaseModel] | Mapping[str, Any]) -> Any:
    """JSON-ready form of wire models (and dicts/lists of them) for `--json` output."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value
