"""The operations client: replicas tried by common/failover.py's rules, errors as one line."""

from __future__ import annotations

import httpx
import pytest

from cli.errors import ApiError, RegistryUnreachable
from cli.ops_api import OpsClient


def client(handler: object) -> OpsClient:
    return OpsClient(
        "http://a:1,http://b:2",
        "tok",
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
    )


def test_moves_to_the_next_replica_when_one_is_down() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "a":
            raise httpx.ConnectError("refused", request=request)
        assert request.headers["authorization"] == "Bearer tok"
        if request.url.path == "/v1/tokens":
            return httpx.Response(200, json=[{"id": 1}])
        return httpx.Response(200, content=b'{"line":"x"}\n\n{"line":"y"}\n')

    with client(handler) as api:
        assert [i["line"] for i in api.stream("GET", "/v1/apps/w/logs")] == ["x", "y"]
        assert api.call("GET", "/v1/tokens") == [{"id": 1}]
    assert seen[:2] == ["a", "b"] and seen[2] == "b"  # sticks to the one that answered


def test_a_run_that_may_have_started_is_not_sent_again() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        raise httpx.ReadTimeout("slow", request=request)

    with client(handler) as api, pytest.raises(RegistryUnreachable):
        list(api.stream("POST", "/v1/apps/w/run", json={"argv": ["true"]}))
    assert seen == ["a"]


def test_errors_carry_the_registry_detail() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            return httpx.Response(403, json={"detail": "a deploy token for app 'x' may not"})
        raise AssertionError("a 403 is an answer, not a reason to try another replica")

    with client(handler) as api, pytest.raises(ApiError) as caught:
        api.call("GET", "/v1/apps/y/config")
    assert caught.value.status == 403 and "may not (403)" in str(caught.value)

    def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, json={"detail": "host m1's agent is unreachable"})

    with client(unavailable) as api, pytest.raises(ApiError) as caught:
        api.call("POST", "/v1/apps/y/run", json={"argv": ["true"]})
    assert "agent is unreachable (502)" in str(caught.value)
