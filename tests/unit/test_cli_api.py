"""cli.api against an in-process transport: error translation and response parsing."""

from __future__ import annotations

import json

import httpx
import pytest

from cli.api import RegistryClient
from cli.errors import ApiError, RegistryUnreachable
from common.wire import AppCreate

APP = {
    "name": "hello",
    "domains": [],
    "instances": 1,
    "health_path": "/health",
    "urls": ["https://hello.localhost:8443/"],
    "active_release": None,
    "created_at": "2024-01-01T00:00:00Z",
}


def client_for(handler) -> RegistryClient:
    return RegistryClient("http://registry.test", "tok", transport=httpx.MockTransport(handler))


def test_sends_bearer_token_and_parses_apps() -> None:
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers["authorization"]
        return httpx.Response(200, json=[APP])

    apps = client_for(handler).list_apps()
    assert seen["auth"] == "Bearer tok"
    assert apps[0].name == "hello" and apps[0].urls[0].startswith("https://")


def test_401_says_run_paas_login() -> None:
    api = client_for(lambda r: httpx.Response(401, json={"detail": "bad token"}))
    with pytest.raises(ApiError, match=r"refused the token \(401\); run paas login"):
        api.list_apps()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, {"detail": "no app named 'nope'"}, "no app named 'nope' (404)"),
        (409, {"detail": "app 'hello' already exists"}, "already exists (409)"),
        (422, {"detail": "invalid app name 'Bad': use ..."}, "invalid app name"),
        (
            422,
            {"detail": [{"loc": ["body", "name"], "msg": "bad name", "type": "value_error"}]},
            "name: bad name (422)",
        ),
        (500, "boom", "boom (500)"),
    ],
)
def test_error_statuses_become_one_line(status: int, body: object, expected: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    with pytest.raises(ApiError) as info:
        client_for(handler).get_app("nope")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.status == status


def test_find_app_maps_404_to_none() -> None:
    api = client_for(lambda r: httpx.Response(404, json={"detail": "no such app"}))
    assert api.find_app("hello") is None


def test_head_404_means_missing_artifact() -> None:
    api = client_for(lambda r: httpx.Response(404 if r.method == "HEAD" else 500))
    assert api.has_artifact("a" * 64) is False


def test_unreachable_registry_names_the_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(RegistryUnreachable) as info:
        client_for(handler).list_apps()
    assert str(info.value) == (
        "cannot reach the registry at http://registry.test: connection refused"
    )


def test_unexpected_shape_is_an_api_error_not_a_traceback() -> None:
    api = client_for(lambda r: httpx.Response(200, json=[{"name": "hello"}]))
    with pytest.raises(ApiError, match="unexpected answer"):
        api.list_apps()


def test_create_app_posts_the_wire_model() -> None:
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = json.loads(request.content)
        return httpx.Response(201, json=APP)

    client_for(handler).create_app(AppCreate(name="hello", health_path="/health"))
    assert seen["body"] == {
        "name": "hello",
        "domains": [],
        "instances": 1,
        "health_path": "/health",
    }


def test_watch_sends_index_and_reads_header() -> None:
    seen = {}
    release = {
        "app": "hello",
        "version": 1,
        "artifact_sha256": "a" * 64,
        "processes": {"web": "python app.py"},
        "health_path": "/",
        "config": {},
        "status": "deploying",
        "stage": "installing",
        "error": None,
        "created_at": "2024-01-01T00:00:00Z",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen["params"] = dict(request.url.params)
        return httpx.Response(200, json=release, headers={"X-Paas-Index": "42"})

    got, index = client_for(handler).watch_release("hello", 1, index=7, wait_s=30)
    assert seen["params"] == {"index": "7", "wait": "30s"}
    assert got.stage == "installing" and index == 42


def test_real_transports_refuse_clear_text_and_unverified_registries(tmp_path) -> None:
    """Without an injected transport the CLI's client builds the verified one
    (common/registry_tls.py): http:// off loopback and https:// with no pin or CA are refused
    before anything connects; the opt-in env allows http:// (test networks)."""
    from cli.errors import ConfigError
    from common.registry_tls import RegistryTrust

    pin = RegistryTrust(pins=("sha256:" + "ab" * 32,))
    with pytest.raises(ConfigError, match="refusing plain http://"):
        RegistryClient("http://127.0.0.1:1,http://198.18.0.5:8070", "tok", trust=pin)
    with pytest.raises(ConfigError, match="fingerprint"):
        RegistryClient("https://198.18.0.5:8070", "tok")
    RegistryClient("https://198.18.0.5:8070", "tok", trust=pin).close()
    RegistryClient("http://127.0.0.1:1", "tok").close()


def test_insecure_http_opt_in_is_explicit(monkeypatch) -> None:
    from cli.errors import ConfigError

    monkeypatch.setenv("PAAS_REGISTRY_INSECURE_HTTP", "0")
    with pytest.raises(ConfigError):
        RegistryClient("http://198.18.0.5:8070", "tok")
    monkeypatch.setenv("PAAS_REGISTRY_INSECURE_HTTP", "1")
    RegistryClient("http://198.18.0.5:8070", "tok").close()
