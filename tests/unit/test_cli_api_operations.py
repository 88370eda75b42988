"""The typed client's operations routes (tokens, audit, logs, runs, data): replicas tried by
common/failover.py's rules, streams parsed as they come, errors as one line."""

from __future__ import annotations

import httpx
import pytest

from cli.api import RegistryClient
from cli.errors import ApiError, RegistryUnreachable

TOKEN = {
    "id": 1,
    "scope": "admin",
    "name": None,
    "app": None,
    "host": None,
    "domains": [],
    "created_at": "2026-12-03T10:00:00Z",
}


def client(handler: object) -> RegistryClient:
    return RegistryClient(
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
        assert request.headers["host"] == "b:2"
        if request.url.path == "/v1/tokens":
            return httpx.Response(200, json=[TOKEN])
        return httpx.Response(200, content=b'{"line":"x"}\n\n{"line":"y"}\n')

    with client(handler) as api:
        assert [i.line for i in api.logs("w", {})] == ["x", "y"]
        assert [t.id for t in api.list_tokens()] == [1]
    assert seen[:2] == ["a", "b"] and seen[2] == "b"  # sticks to the one that answered


def test_a_run_that_may_have_started_is_not_sent_again() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        raise httpx.ReadTimeout("slow", request=request)

    with client(handler) as api, pytest.raises(RegistryUnreachable):
        list(api.run("w", ["true"], timeout_s=None))
    assert seen == ["a"]


def test_run_events_and_the_request_body() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(
            200, content=b'{"stream":"stdout","data":"hi\\n"}\n\n{"exit":3,"host":"m1"}\n'
        )

    with client(handler) as api:
        events = list(api.run("w", ["echo", "hi"], host="m1", timeout_s=5.0))
    assert bodies == [b'{"argv":["echo","hi"],"timeout_s":5.0,"host":"m1"}']
    assert events[0].data == "hi\n" and events[0].stream == "stdout"
    assert events[1].exit == 3


def test_a_stream_cut_off_is_one_clear_error() -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield b'{"line":"x"}\n'
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Broken())

    with client(handler) as api, pytest.raises(RegistryUnreachable, match="broke off"):
        list(api.logs("w", {"follow": True}))


def test_data_export_streams_and_names_the_host() -> None:
    class Archive(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from (b"tar-", b"bytes")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Archive(), headers={"x-paas-host": "m1"})

    with client(handler) as api, api.export_data("w") as (host, chunks):
        assert host == "m1" and b"".join(chunks) == b"tar-bytes"


def test_errors_carry_the_registry_detail() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            return httpx.Response(403, json={"detail": "a deploy token for app 'x' may not"})
        raise AssertionError("a 403 is an answer, not a reason to try another replica")

    with client(handler) as api, pytest.raises(ApiError) as caught:
        api.get_config("y")
    assert caught.value.status == 403 and "may not (403)" in str(caught.value)

    def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, json={"detail": "host m1's agent is unreachable"})

    with client(unavailable) as api, pytest.raises(ApiError) as caught:
        list(api.run("y", ["true"], timeout_s=None))
    assert "agent is unreachable (502)" in str(caught.value)
