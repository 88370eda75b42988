"""Registry URL lists and failover, in the agents' and the CLI's clients (httpx.MockTransport):
the next replica on connection errors and 502/503, sticky once moved, a watch keeps its index,
and a request that may have been processed is not sent twice unless repeating it is harmless."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from agent.errors import RegistryCallFailed
from agent.link.client import RegistryClient as AgentClient
from agent.settings import AgentSettings
from cli.api import RegistryClient as CliClient
from cli.config import load
from cli.errors import ConfigError, RegistryUnreachable
from common.failover import split_urls
from common.wire import HostReport

A, B = "http://a.test:8070", "http://b.test:8070"
ROUTING = {"index": 9, "apps": []}


def test_split_urls() -> None:
    assert split_urls(f" {A}/ , {B},{A}") == [A, B]
    for bad in ("", "ftp://x", "http://a b", "http://a;rm -rf"):
        with pytest.raises(ValueError):
            split_urls(bad)


def test_agent_settings_and_cli_config_take_lists(tmp_path: Path) -> None:
    # Off loopback the agent needs https:// and a pin per replica (each may have its own cert).
    pins = f"sha256:{'a' * 64}, sha256:{'b' * 64}"
    secure_a, secure_b = A.replace("http:", "https:"), B.replace("http:", "https:")
    settings = AgentSettings(
        role="frontend",
        registry_url=f"{secure_a}/, {secure_b}",
        registry_fingerprint=pins,
        name="f1",
        state_dir=tmp_path,
    )
    assert settings.registry_url == f"{secure_a},{secure_b}"
    assert settings.registry_trust.pins == (f"sha256:{'a' * 64}", f"sha256:{'b' * 64}")
    with pytest.raises(ValueError):
        AgentSettings(
            role="frontend",
            registry_url=f"{secure_a},b.test",
            registry_fingerprint=pins,
            name="f1",
            state_dir=tmp_path,
        )
    env = {"PAAS_REGISTRY_URL": f"{A},{B}/", "PAAS_TOKEN": "t", "PAAS_CONFIG": str(tmp_path / "c")}
    assert load(env).registry_url == f"{A},{B}"
    with pytest.raises(ConfigError):
        load({**env, "PAAS_REGISTRY_URL": "a.test"})


def _down(host: str, exc: type[Exception] = httpx.ConnectError):
    """A transport where `host` fails with `exc` and the other answers; records every call."""
    calls: list[tuple[str, str, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.url.host, request.method, dict(request.url.params)))
        if request.url.host == host:
            raise exc("replica gone", request=request)
        if request.url.path == "/v1/routing":
            return httpx.Response(200, json=ROUTING, headers={"X-Paas-Index": "9"})
        if request.url.path.endswith("/report"):
            return httpx.Response(204, headers={"X-Paas-Index": "9"})
        return httpx.Response(200, json={"ok": True})

    return handler, calls


def test_agent_watch_resumes_on_the_next_replica_with_its_index() -> None:
    handler, calls = _down("a.test")
    client = AgentClient(f"{A},{B}", token="t", transport=httpx.MockTransport(handler))

    async def go() -> None:
        table = await client.routing(index=7, wait_s=30)
        assert table.index == 9
        await client.routing(index=9, wait_s=0)
        await client.aclose()

    asyncio.run(go())
    assert [c[0] for c in calls] == ["a.test", "b.test", "b.test"]  # sticky after moving
    assert calls[1][2]["index"] == "7"
    assert client.base_url == B


def test_agent_report_is_repeated_after_a_cut_connection_but_a_join_is_not() -> None:
    handler, calls = _down("a.test", httpx.ReadError)
    client = AgentClient(f"{A},{B}", token="t", transport=httpx.MockTransport(handler))

    async def go() -> None:
        assert await client.report("m1", HostReport(instances=[])) == 9
        client.registries.settle(0)
        with pytest.raises(RegistryCallFailed):
            await client._request("POST", "/v1/hosts/join", json={})
        await client.aclose()

    asyncio.run(go())
    assert [(c[0], c[1]) for c in calls] == [
        ("a.test", "POST"),
        ("a.test", "POST"),  # cut before an answer: once more to the same replica
        ("b.test", "POST"),
        ("a.test", "POST"),  # join cut mid-way: may have happened, not repeated anywhere
    ]


def test_agent_moves_on_after_503_but_not_after_409() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.test":
            return httpx.Response(503, json={"detail": "busy"})
        return httpx.Response(409, json={"detail": "exists"})

    client = AgentClient(f"{A},{B}", token="t", transport=httpx.MockTransport(handler))

    async def go() -> RegistryCallFailed:
        with pytest.raises(RegistryCallFailed) as info:
            await client._request("POST", "/v1/hosts/join", json={})
        await client.aclose()
        return info.value

    error = asyncio.run(go())
    assert error.status == 409 and client.base_url == B


def test_cli_fails_over_and_names_every_replica_when_all_are_down() -> None:
    handler, calls = _down("a.test")
    with CliClient(f"{A},{B}", "tok", transport=httpx.MockTransport(handler)) as api:
        assert api.health() is True
        assert api.base_url == B
    assert [c[0] for c in calls] == ["a.test", "b.test"]

    def nobody(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    api = CliClient(f"{A},{B}", "tok", transport=httpx.MockTransport(nobody))
    with api, pytest.raises(RegistryUnreachable) as info:
        api.health()
    assert "a.test" in str(info.value) and "b.test" in str(info.value)


def test_cli_does_not_repeat_a_post_cut_mid_way() -> None:
    handler, calls = _down("a.test", httpx.ReadError)
    with CliClient(f"{A},{B}", "tok", transport=httpx.MockTransport(handler)) as api:
        with pytest.raises(RegistryUnreachable):
            api._request("POST", "/v1/apps", json={"name": "x"})
        assert api.health() is True  # a read is repeated on B
    assert [(c[0], c[1]) for c in calls] == [
        ("a.test", "POST"),
        ("a.test", "GET"),
        ("a.test", "GET"),  # a read cut before its answer: once more, then the next replica
        ("b.test", "GET"),
    ]


def test_a_repeatable_request_cut_before_its_answer_is_sent_again_to_the_same_replica() -> None:
    """What a pooled connection that the registry has just closed does to the next request.
    With one replica there is nowhere else to go: the request is sent once more (on a new
    connection), unless it may have been processed (a plain POST)."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) % 2:  # every first try is cut off
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        if request.url.path.endswith("/report"):
            return httpx.Response(204, headers={"X-Paas-Index": "4"})
        return httpx.Response(200, json={"ok": True})

    with CliClient(A, "tok", transport=httpx.MockTransport(handler)) as api:
        assert api.health() is True
    agent = AgentClient(A, token="t", transport=httpx.MockTransport(handler))

    async def go() -> None:
        assert await agent.report("m1", HostReport(instances=[])) == 4  # marked idempotent
        with pytest.raises(RegistryCallFailed):
            await agent._request("POST", "/v1/hosts/join", json={})
        await agent.aclose()

    asyncio.run(go())
    assert calls == ["GET", "GET", "POST", "POST", "POST"]


@pytest.mark.parametrize(
    ("cut", "expected"),
    [(httpx.ConnectError, ["a.test", "b.test"]), (httpx.ReadError, ["a.test"])],
)
def test_an_upload_read_as_it_goes_moves_on_only_if_it_never_left(
    tmp_path: Path, cut: type[httpx.TransportError], expected: list[str]
) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x" * 100)
    sha = "a" * 64
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "a.test":
            raise cut("replica gone", request=request)
        assert request.content == b"x" * 100
        return httpx.Response(200, json={"sha256": sha, "size": 100})

    with CliClient(f"{A},{B}", "tok", transport=httpx.MockTransport(handler)) as api:
        if cut is httpx.ConnectError:
            assert api.upload_artifact(sha, archive).size == 100
        else:
            with pytest.raises(RegistryUnreachable):
                api.upload_artifact(sha, archive)
    assert hosts == expected


def test_each_replica_keeps_its_own_path_and_host_header() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["host"]))
        if request.url.host == "a.test":
            return httpx.Response(503, json={"detail": "busy"})
        return httpx.Response(200, json={"ok": True})

    urls = f"{A}/base,http://b.test:9000/other/"
    with CliClient(urls, "tok", transport=httpx.MockTransport(handler)) as api:
        assert api.health() is True
    assert seen == [
        (f"{A}/base/v1/health", "a.test:8070"),
        ("http://b.test:9000/other/v1/health", "b.test:9000"),
    ]


def test_agent_download_cut_off_half_way_is_fetched_whole_from_the_next_replica(
    tmp_path: Path,
) -> None:
    import hashlib

    body = b"artifact bytes " * 1000
    sha = hashlib.sha256(body).hexdigest()

    class Cut(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            yield body[:100]
            raise httpx.ReadError("connection reset")

    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "a.test":
            return httpx.Response(200, stream=Cut())
        return httpx.Response(200, content=body)

    client = AgentClient(f"{A},{B}", token="t", transport=httpx.MockTransport(handler))
    dest = tmp_path / "a.tar.gz"

    async def go() -> None:
        await client.download_artifact(sha, dest)
        await client.aclose()

    asyncio.run(go())
    assert hosts == ["a.test", "b.test"] and dest.read_bytes() == body
    assert client.base_url == B
