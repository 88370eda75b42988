"""What `paas status APP` and `paas releases APP [VERSION]` say about a crash-looping release,
an automatic rollback and a release phase's output (cli/output.py, plain values)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cli import output
from common.wire import App, Release

WHEN = datetime(2026, 1, 1, tzinfo=UTC)
CRASH = "instance 7 (web) on host m1 crashed (exited with status 1, 3 crashes)"


def release(version: int, status: str, **extra: object) -> Release:
    values: dict[str, object] = {
        "app": "shop",
        "version": version,
        "artifact_sha256": "a" * 64,
        "processes": {"web": "python app.py"},
        "health_path": "/",
        "config": {},
        "status": status,
        "stage": "routed" if status != "failed" else "failed",
        "error": None,
        "created_at": WHEN,
    }
    values.update(extra)
    return Release.model_validate(values)


def app() -> App:
    return App.model_validate(
        {
            "name": "shop",
            "domains": [],
            "instances": 1,
            "health_path": "/",
            "urls": ["https://shop.paas.test/"],
            "active_release": 2,
            "created_at": WHEN,
        }
    )


def test_status_says_crashing_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    output.app_detail(app(), release(2, "active", crashing=CRASH, description="deploy abc"))
    out = capsys.readouterr().out
    assert "release v2: active, crashing, stage routed (deploy abc)" in out
    assert f"  {CRASH}" in out


def test_releases_say_auto_rollback_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    rolled = release(3, "active", description=f"auto-rollback to v1: v2 crash-looped ({CRASH})")
    crashed = release(
        2,
        "failed",
        error=f"crash loop after it went live: {CRASH}\nrolled back automatically by v3",
    )
    output.releases_table([rolled, crashed])
    out = capsys.readouterr().out
    assert "auto-rollback to v1: v2 crash-looped" in out
    assert "rolled back automatically by v3" in out


def test_one_release_shows_its_release_phase_output(capsys: pytest.CaptureFixture[str]) -> None:
    one = release(4, "active", release_output="migrating\n3 migrations applied", min_healthy_s=10)
    output.release_detail(one)
    out = capsys.readouterr().out
    assert "release v4 of shop: active, stage routed" in out
    assert "stays healthy 10 s before it replaces the previous one" in out
    assert "release phase output:\n  migrating\n  3 migrations applied" in out
