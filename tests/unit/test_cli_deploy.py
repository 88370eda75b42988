"""cli.deploy with a fake registry transport: naming, upload-if-missing, stage following."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

from cli.api import RegistryClient
from cli.deploy import Deployer, resolve_app_name
from cli.errors import DeployFailed, PackError

REPO = Path(__file__).resolve().parents[2]
NOW = "2024-01-01T00:00:00Z"


class FakeRegistry:
    """Just enough of the API for one deploy; stages advance one per watch call."""

    def __init__(
        self, stages: list[tuple[str, str]], *, error: str | None = None, **extra: object
    ) -> None:
        self.stages = stages
        self.error = error
        self.extra = extra  # more release fields, the same at every stage
        self.apps: dict[str, dict] = {}
        self.artifacts: set[str] = set()
        self.calls: list[str] = []
        self.step = 0
        self.hosts: list[dict] = []

    def release(self) -> dict:
        stage, status = self.stages[min(self.step, len(self.stages) - 1)]
        return {
            "app": "hello",
            "version": 1,
            "artifact_sha256": next(iter(self.artifacts)),
            "processes": {"web": "python app.py"},
            "health_path": "/health",
            "config": {},
            "status": status,
            "stage": stage,
            "error": self.error if status == "failed" else None,
            "created_at": NOW,
            **self.extra,
        }

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append(f"{request.method} {path}")
        if path == "/v1/apps" and request.method == "POST":
            body = json.loads(request.content)
            self.apps[body["name"]] = {
                **body,
                "urls": [f"https://{body['name']}.localhost:8443/"],
                "active_release": None,
                "created_at": NOW,
            }
            return httpx.Response(201, json=self.apps[body["name"]])
        if path.startswith("/v1/apps/") and path.count("/") == 3:
            name = path.rsplit("/", 1)[1]
            if name in self.apps:
                return httpx.Response(200, json=self.apps[name])
            return httpx.Response(404, json={"detail": f"no app named {name!r}"})
        if path == "/v1/hosts":
            return httpx.Response(200, json=self.hosts)
        if path.startswith("/v1/artifacts/"):
            sha = path.rsplit("/", 1)[1]
            if request.method == "HEAD":
                return httpx.Response(200 if sha in self.artifacts else 404)
            self.artifacts.add(sha)
            return httpx.Response(200, json={"sha256": sha, "size": len(request.read())})
        if path.endswith("/releases") and request.method == "POST":
            return httpx.Response(201, json=self.release())
        if "/releases/" in path:
            self.step += 1
            return httpx.Response(
                200, json=self.release(), headers={"X-Paas-Index": str(self.step)}
            )
        return httpx.Response(500, json={"detail": f"unexpected {request.method} {path}"})


def run(fake: FakeRegistry, app_dir: Path, **kwargs) -> tuple[list[str], object]:
    lines: list[str] = []
    api = RegistryClient("http://fake", "t", transport=httpx.MockTransport(fake))
    deployer = Deployer(api, lines.append, sleep=lambda s: None)
    try:
        return lines, deployer.run(app_dir, **kwargs)
    except DeployFailed as exc:
        return lines, exc


OK = [("uploaded", "deploying"), ("installing", "deploying"), ("installing", "deploying"),
      ("starting", "deploying"), ("healthy", "deploying"), ("routed", "active")]  # fmt: skip


def test_deploy_creates_app_uploads_and_prints_each_stage_once() -> None:
    fake = FakeRegistry(OK)
    lines, result = run(fake, REPO / "examples" / "hello")
    assert lines[0] == "created app hello"
    assert any(line.startswith("uploaded artifact") for line in lines)
    stages = [m[1] for line in lines if (m := re.fullmatch(r"(\w+)\s+\d+\.\ds", line))]
    assert stages == ["uploaded", "installing", "starting", "healthy", "routed"]
    assert lines[-1] == "https://hello.localhost:8443/"
    assert result.release.stage == "routed" and result.created_app
    assert fake.apps["hello"]["health_path"] == "/health"  # from paas.toml


def test_second_deploy_skips_upload_of_a_known_artifact() -> None:
    fake = FakeRegistry(OK)
    run(fake, REPO / "examples" / "hello")
    fake.step = 0
    fake.calls.clear()
    lines, _ = run(fake, REPO / "examples" / "hello")
    assert not any(c.startswith("PUT") for c in fake.calls)
    assert "created app hello" not in lines
    assert any("already stored" in line for line in lines)


def test_failed_release_raises_with_the_reason() -> None:
    fake = FakeRegistry(
        [("uploaded", "deploying"), ("starting", "deploying"), ("failed", "failed")],
        error="Traceback...\nSystemExit: boom",
    )
    lines, exc = run(fake, REPO / "examples" / "hello")
    assert isinstance(exc, DeployFailed)
    assert str(exc).startswith("failed: release v1 of hello: ")
    assert "boom" in str(exc)
    assert lines[-1].startswith("failed")


def test_the_health_window_and_the_release_phase_output_are_shown() -> None:
    stages = [("release phase", "deploying"), *OK]
    fake = FakeRegistry(
        stages,
        min_healthy_s=10,
        release_output="migrating\n3 migrations applied",
        processes={"web": "python app.py", "release": "python migrate.py"},
    )
    lines, result = run(fake, REPO / "examples" / "hello")
    assert result.release.stage == "routed"
    at = lines.index(next(line for line in lines if line.startswith("release phase")))
    assert lines[at + 1 : at + 3] == ["  release> migrating", "  release> 3 migrations applied"]
    healthy = lines.index(next(line for line in lines if line.startswith("healthy")))
    assert lines[healthy + 1].strip() == (
        "must stay healthy 10 s before the switch; the previous release serves meanwhile"
    )
    assert sum("release>" in line for line in lines) == 2  # once, not once per poll


def test_a_crash_before_the_switch_fails_the_deploy_with_the_reason() -> None:
    reason = (
        "instance 7 (web) on host machine-1 crashed (exited with status 1 while running)\n"
        "(it was healthy, but did not stay healthy within 8 s before the switch; v1 keeps"
        " serving; see `paas logs hello`)"
    )
    fake = FakeRegistry(
        [("starting", "deploying"), ("healthy", "deploying"), ("failed", "failed")],
        error=reason,
        min_healthy_s=8,
    )
    lines, exc = run(fake, REPO / "examples" / "hello")
    assert any("must stay healthy 8 s before the switch" in line for line in lines)
    assert isinstance(exc, DeployFailed) and exc.exit_code != 0
    assert str(exc) == f"failed: release v1 of hello: {reason}"


def test_timeout_is_a_clear_failure() -> None:
    fake = FakeRegistry([("installing", "deploying")])
    ticks = iter(range(0, 10_000, 50))
    api = RegistryClient("http://fake", "t", transport=httpx.MockTransport(fake))
    deployer = Deployer(api, lambda line: None, clock=lambda: float(next(ticks)))
    with pytest.raises(DeployFailed, match=r"did not finish in time.*installing"):
        deployer.run(REPO / "examples" / "hello", timeout=120)


def test_app_name_sources(tmp_path: Path) -> None:
    app = tmp_path / "my-app"
    shutil.copytree(REPO / "examples" / "hello", app)
    assert resolve_app_name(app) == "hello"  # paas.toml wins over the folder name
    assert resolve_app_name(app, "other") == "other"
    (app / "paas.toml").unlink()
    assert resolve_app_name(app) == "my-app"
    (app / "paas.toml").write_text('name = "top-level"\n')
    assert resolve_app_name(app) == "top-level"


def test_bad_app_names_are_refused_before_any_request(tmp_path: Path) -> None:
    app = tmp_path / "Bad_Folder"
    shutil.copytree(REPO / "examples" / "hello", app)
    (app / "paas.toml").unlink()
    with pytest.raises(PackError, match=r"invalid app name 'Bad_Folder'.*--app"):
        resolve_app_name(app)
    with pytest.raises(PackError, match="invalid app name"):
        resolve_app_name(app, "bad;name")


def test_stuck_at_healthy_names_the_proxy_error() -> None:
    fake = FakeRegistry([("uploaded", "deploying"), ("healthy", "active")])
    fake.hosts = [
        {
            "name": "frontend-1",
            "role": "frontend",
            "address": "127.0.0.1",
            "proxy_port": 8443,
            "labels": {},
            "state": "up",
            "last_heartbeat": NOW,
            "instances": 0,
            "proxy_error": "[NOTICE] starting\n[ALERT] socket path too long",
        }
    ]
    ticks = iter(range(0, 10_000, 20))
    lines: list[str] = []
    api = RegistryClient("http://fake", "t", transport=httpx.MockTransport(fake))
    deployer = Deployer(api, lines.append, clock=lambda: float(next(ticks)))
    with pytest.raises(DeployFailed, match="socket path too long"):
        deployer.run(REPO / "examples" / "hello", timeout=200)
    assert lines.count("waiting for frontend-1: [ALERT] socket path too long") == 1
