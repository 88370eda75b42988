"""RegistryClient against httpx.MockTransport: auth, watch parameters, errors, artifacts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from agent.errors import ArtifactMismatch, RegistryCallFailed
from agent.link.client import RegistryClient
from agent.link.join import join_or_load_token, join_with_retry
from agent.link.outage import OutageLog, backoff_delays
from agent.settings import AgentSettings, load_settings
from common.wire import HostJoin, HostReport, InstanceReport


def run(coro):
    return asyncio.run(coro)


def make_client(handler, token: str | None = "host-tok") -> RegistryClient:
    return RegistryClient(
        "http://registry.test", token=token, transport=httpx.MockTransport(handler)
    )


def settings(tmp_path: Path, **extra: object) -> AgentSettings:
    values: dict[str, object] = {
        "role": "frontend",
        "registry_url": "http://127.0.0.1:9",
        "name": "front-1",
        "state_dir": tmp_path / "state",
        "https_port": 9443,
    }
    return AgentSettings(**{**values, **extra})


def test_routing_watch_sends_index_wait_and_token() -> None:
    seen: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers.get("authorization")
        seen["params"] = dict(request.url.params)
        body = {
            "index": 7,
            "apps": [
                {
                    "name": "hello",
                    "domains": ["hello.localhost"],
                    "servers": [{"host": "m1", "address": "127.0.0.1", "port": 8081}],
                }
            ],
        }
        return httpx.Response(200, json=body, headers={"X-Paas-Index": "7"})

    async def go() -> None:
        client = make_client(handler)
        table = await client.routing(index=3, wait_s=30)
        await client.aclose()
        assert table.index == 7
        assert table.apps[0].servers[0].port == 8081

    run(go())
    assert seen["auth"] == "Bearer host-tok"
    assert seen["params"] == {"index": "3", "wait": "30000ms"}


def test_desired_and_report_paths() -> None:
    paths: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append((request.method, request.url.path))
        if request.method == "POST":
            body = json.loads(request.content)
            assert body["applied_index"] == 4
            assert body["instances"][0]["state"] == "running"
            return httpx.Response(204)
        return httpx.Response(200, json={"index": 4, "host": "m1", "instances": []})

    async def go() -> None:
        client = make_client(handler)
        desired = await client.desired("m1", index=0, wait_s=1)
        assert desired.index == 4
        report = HostReport(instances=[InstanceReport(id=1, state="running")], applied_index=4)
        await client.report("m1", report)
        await client.aclose()

    run(go())
    assert paths == [("GET", "/v1/hosts/m1/desired"), ("POST", "/v1/hosts/m1/report")]


def test_errors_are_translated() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"detail": "this token may not read routing"})

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"index": 1, "apps": [{"name": "Bad;Name", "domains": [], "servers": []}]}
        )

    async def go() -> None:
        with pytest.raises(RegistryCallFailed, match="may not read routing") as refused:
            await make_client(refuse).routing(index=0, wait_s=1)
        assert refused.value.status == 403 and not refused.value.retryable
        with pytest.raises(RegistryCallFailed, match="unreachable") as down:
            await make_client(broken).routing(index=0, wait_s=1)
        assert down.value.status is None and down.value.retryable
        with pytest.raises(RegistryCallFailed, match="invalid RoutingTable"):
            await make_client(garbage).routing(index=0, wait_s=1)
        with pytest.raises(ValueError):
            await make_client(refuse).desired("../admin", index=0, wait_s=1)

    run(go())


def test_download_artifact_verifies_sha(tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    good = hashlib.sha256(payload).hexdigest()
    other = hashlib.sha256(b"other").hexdigest()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer host-tok"
        return httpx.Response(200, content=payload)

    async def go() -> None:
        client = make_client(handler)
        dest = tmp_path / "artifacts" / f"{good}.tar.gz"
        await client.download_artifact(good, dest)
        assert dest.read_bytes() == payload
        bad_dest = tmp_path / "artifacts" / f"{other}.tar.gz"
        with pytest.raises(ArtifactMismatch):
            await client.download_artifact(other, bad_dest)
        assert not bad_dest.exists()
        assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no temp left
        with pytest.raises(ValueError):
            await client.download_artifact("../../etc/passwd", bad_dest)

    run(go())


def test_join_once_then_reuse_token(tmp_path: Path) -> None:
    joins: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/hosts/join"
        assert request.headers["authorization"] == "Bearer join-secret"
        joins.append(json.loads(request.content))
        return httpx.Response(200, json={"name": "front-1", "token": "issued-token"})

    cfg = settings(tmp_path, join_token="join-secret")

    async def go() -> None:
        client = make_client(handler, token=None)
        assert await join_or_load_token(client, cfg) == "issued-token"
        assert client.token == "issued-token"
        again = make_client(handler, token=None)
        assert await join_or_load_token(again, cfg) == "issued-token"
        assert again.token == "issued-token"

    run(go())
    assert len(joins) == 1
    assert joins[0] == HostJoin(
        name="front-1", role="frontend", address="127.0.0.1", proxy_port=9443
    ).model_dump(mode="json")
    mode = stat.S_IMODE(cfg.host_token_file.stat().st_mode)
    assert mode == 0o600


def test_no_token_and_no_join_token_is_a_clear_error(tmp_path: Path) -> None:
    async def go() -> None:
        client = make_client(lambda request: httpx.Response(500), token=None)
        with pytest.raises(RegistryCallFailed, match="join token"):
            await join_or_load_token(client, settings(tmp_path))

    run(go())


def test_join_retries_an_outage_and_stops_on_a_refused_join_token(tmp_path: Path) -> None:
    """The one join both agents use: a 503 is waited out, a wrong join token (401) is not."""
    answers = [httpx.Response(503, json={"detail": "starting"})]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] != "Bearer join-secret":
            return httpx.Response(401, json={"detail": "unknown or revoked token"})
        if answers:
            return answers.pop()
        return httpx.Response(200, json={"name": "front-1", "token": "issued-token"})

    async def go() -> None:
        stop = asyncio.Event()
        good = settings(tmp_path / "good", join_token="join-secret")
        assert await join_with_retry(make_client(handler, token=None), good, stop)
        assert good.host_token_file.read_text() == "issued-token"
        wrong = settings(tmp_path / "wrong", join_token="wrong-token")
        with pytest.raises(RegistryCallFailed, match="unknown or revoked token") as refused:
            await join_with_retry(make_client(handler, token=None), wrong, stop)
        assert refused.value.status == 401 and not wrong.host_token_file.exists()

    run(go())
    assert answers == []


def test_outage_log_says_start_and_end_once(caplog: pytest.LogCaptureFixture) -> None:
    outage = OutageLog("registry unreachable", "registry reachable again")
    with caplog.at_level("INFO", logger="agent.link.outage"):
        outage.recovered()  # no outage yet: nothing to say
        delays = [outage.failed(RegistryCallFailed(f"try {n}")) for n in range(4)]
        outage.recovered()
        outage.recovered()
    assert [r.getMessage() for r in caplog.records] == [
        "registry unreachable: try 0",
        "registry reachable again",
    ]
    assert len(delays) == 4 and all(0 < d <= 15.0 for d in delays)


def test_backoff_grows_with_jitter_and_caps() -> None:
    low = backoff_delays(base=0.5, cap=4.0, rng=lambda: 0.0)
    assert [next(low) for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    high = backoff_delays(base=0.5, cap=4.0, rng=lambda: 1.0)
    assert [next(high) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_settings_precedence_and_validation(tmp_path: Path, monkeypatch) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'role = "machine"\nregistry_url = "https://r:8070/"\nname = "m1"\n'
        f'registry_fingerprint = "SHA256:{":".join(["AB"] * 32)}"\n'
        f'state_dir = "{tmp_path}/s"\nproxy_port = 9000\nhttp_port = 9001\n'
        '[labels]\nzone = "a"\n'
    )
    monkeypatch.setenv("PAAS_PROXY_PORT", "9100")
    monkeypatch.setenv("PAAS_HTTP_PORT", "9200")
    loaded = load_settings(toml, http_port=9300, name=None)
    assert loaded.role == "machine" and loaded.name == "m1"
    assert loaded.registry_url == "https://r:8070"
    assert loaded.registry_fingerprint == "sha256:" + "ab" * 32  # openssl's form, normalised
    assert loaded.proxy_port == 9100  # env beats file
    assert loaded.http_port == 9300  # CLI beats env
    assert loaded.labels == {"zone": "a"}
    assert loaded.port_bounds == (20000, 29999)
    for bad in (
        {"name": "Bad_Name"},
        {"address": "1.2.3.4 evil"},
        {"port_range": "9-1"},
        {"labels": {"a b": "c"}},
        {"registry_url": "http://198.18.0.5:8070"},  # tokens in clear off loopback
        {"registry_url": "https://198.18.0.5:8070"},  # no pin and no CA: nothing to verify
        {"registry_url": "https://r:1", "registry_fingerprint": "md5:" + "ab" * 16},
        {"registry_url": "https://r:1", "registry_ca": str(tmp_path / "missing.pem")},
    ):
        with pytest.raises(ValueError):
            settings(tmp_path, **bad)


def test_real_transport_refuses_clear_text_and_unverified_registries() -> None:
    """The agent's own transport (no test transport injected): http:// off loopback and an
    https:// registry with neither pin nor CA are refused before anything connects."""
    from common.registry_tls import RegistryTrust, RegistryTrustError

    with pytest.raises(RegistryTrustError, match="refusing plain http://"):
        RegistryClient("http://198.18.0.5:8070")
    with pytest.raises(RegistryTrustError, match="fingerprint"):
        RegistryClient("https://198.18.0.5:8070")
    RegistryClient("https://198.18.0.5:8070", trust=RegistryTrust(pins=("sha256:" + "ab" * 32,)))
    RegistryClient("http://198.18.0.5:8070", insecure_http=True)  # the explicit opt-in
