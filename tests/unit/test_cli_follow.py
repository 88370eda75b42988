"""Following a release through a registry restart, `paas rollback`, and `paas status APP`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from cli import output
from cli.api import RegistryClient
from cli.deploy import Deployer
from cli.errors import ApiError, RegistryUnreachable
from common.wire import App, Release
from tests.unit.test_cli_deploy import NOW, OK, FakeRegistry

REPO = Path(__file__).resolve().parents[2]


class Outage:
    """Wraps a fake registry: watch calls number `down` (1-based) fail like a dead registry."""

    def __init__(self, fake: FakeRegistry, down: set[int], *, status: int | None = None) -> None:
        self.fake = fake
        self.down = down
        self.status = status
        self.watches = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if "/releases/" in request.url.path:
            self.watches += 1
            if self.watches in self.down:
                if self.status is not None:
                    return httpx.Response(self.status, text="Bad Gateway")
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return self.fake(request)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def deployer(transport: Outage, lines: list[str], clock: Clock, **kwargs: float) -> Deployer:
    api = RegistryClient("http://fake", "t", transport=httpx.MockTransport(transport))
    return Deployer(api, lines.append, clock=clock, sleep=clock.sleep, **kwargs)


def test_follow_retries_through_a_registry_restart() -> None:
    outage = Outage(FakeRegistry(OK), down={2, 3, 4})
    lines: list[str] = []
    clock = Clock()
    result = deployer(outage, lines, clock).run(REPO / "examples" / "hello")
    assert result.release.stage == "routed"
    lost = [line for line in lines if line.startswith("lost the registry")]
    assert lost == [
        "lost the registry (cannot reach the registry at http://fake: connection refused);"
        " retrying for up to 120s"
    ]
    assert lines.count("the registry answers again") == 1
    assert clock.sleeps == [0.5, 1.0, 2.0]  # growing back-off


def test_a_bad_gateway_in_front_of_the_registry_is_retried_too() -> None:
    outage = Outage(FakeRegistry(OK), down={2}, status=502)
    lines: list[str] = []
    result = deployer(outage, lines, Clock()).run(REPO / "examples" / "hello")
    assert result.release.stage == "routed"
    assert any("Bad Gateway (502)" in line for line in lines)


def test_follow_gives_up_after_the_reconnect_window() -> None:
    outage = Outage(FakeRegistry(OK), down=set(range(2, 1000)))
    lines: list[str] = []
    clock = Clock()
    with pytest.raises(RegistryUnreachable, match=r"gave up after 3\ds of retrying.*paas releases"):
        deployer(outage, lines, clock, reconnect_s=30).run(REPO / "examples" / "hello")
    assert 30 <= clock.now < 40 and max(clock.sleeps) == 5.0


def test_other_errors_are_not_retried() -> None:
    class Gone(FakeRegistry):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if "/releases/" in request.url.path:
                return httpx.Response(404, json={"detail": "app hello has no release 1"})
            return super().__call__(request)

    clock = Clock()
    with pytest.raises(ApiError, match="has no release 1"):
        deployer(Outage(Gone(OK), set()), [], clock).run(REPO / "examples" / "hello")
    assert clock.sleeps == []


class Rollbacks(FakeRegistry):
    def __init__(self) -> None:
        super().__init__(OK)
        self.artifacts.add("a" * 64)
        self.apps["hello"] = {
            "name": "hello",
            "domains": [],
            "instances": 1,
            "health_path": "/health",
            "urls": ["https://hello.localhost:8443/"],
            "active_release": 1,
            "created_at": NOW,
        }
        self.bodies: list[object] = []

    def release(self) -> dict:
        return {**super().release(), "version": 3, "description": "rollback to v1"}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/apps/hello/rollback":
            self.bodies.append(json.loads(request.content))
            return httpx.Response(201, json=self.release())
        return super().__call__(request)


def test_rollback_follows_the_new_release() -> None:
    fake = Rollbacks()
    lines: list[str] = []
    result = deployer(Outage(fake, set()), lines, Clock()).rollback("hello", version=1)
    assert fake.bodies == [{"version": 1}]
    assert lines[0] == "release v3 of hello: rollback to v1"
    assert "routed" in lines[-2] and lines[-1] == "https://hello.localhost:8443/"
    assert result.release.version == 3
    deployer(Outage(fake, set()), [], Clock()).rollback("hello")
    assert fake.bodies[-1] == {"version": None}


def test_status_shows_the_failed_release_and_its_reason(capsys: pytest.CaptureFixture) -> None:
    fake = Rollbacks()
    app = App.model_validate(fake.apps["hello"])
    active = Release.model_validate(
        {**fake.release(), "version": 1, "status": "active", "stage": "routed"}
    )
    reason = "health check did not pass within 3s (HTTP 500)\n" + "\n".join(
        f"[log] line {n}" for n in range(30)
    )
    failed = Release.model_validate(
        {
            **fake.release(),
            "version": 4,
            "status": "failed",
            "stage": "failed",
            "error": reason,
            "description": "deploy 0123456789ab",
        }
    )
    output.app_detail(app, active, failed)
    shown = capsys.readouterr().out
    assert "release v1: active, stage routed (rollback to v1)" in shown
    assert "latest release v4 (deploy 0123456789ab): failed, stage failed" in shown
    assert "  health check did not pass within 3s (HTTP 500)\n  ...\n" in shown
    assert "[log] line 29" in shown and "[log] line 10" not in shown
