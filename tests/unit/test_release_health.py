"""A release is proven before the old one goes: the min_healthy_s window, a crash in it, the
crash-loop rollback of an active release, and what `paas status`/`paas releases` then show.

Releases are created over the real API; agent reports are then applied with a pure clock
(`apply_report(..., now=T)`, `expire_deadlines(now=T)`, `roll_back_crash_loops(now=T)`), with
T ahead of the wall clock so that the registry's own background tick never acts first.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from common.manifest import DEFAULT_MIN_HEALTHY_S, ManifestError, parse_manifest
from common.wire import HostReport
from controller.api.queries import get_host
from controller.core.deploys import apply_report, expire_deadlines
from controller.core.release_health import CRASH_LOOP_S, STABLE_AFTER_S
from controller.core.rollback import has_crash_loops, roll_back_crash_loops
from tests.support.registry_app import TestRegistry, test_registry

TIMEOUT_S = 300.0
# The pure clock: ahead of the wall clock (so the background tick never switches or rolls back
# first), yet well within the deploys' deadlines (TIMEOUT_S + health timeout after creation).
AHEAD = timedelta(seconds=60)
_t0: list[datetime] = []


def at(seconds: float) -> datetime:
    return _t0[-1] + timedelta(seconds=seconds)


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    _t0.append(datetime.now(UTC) + AHEAD)
    with test_registry(tmp_path, domain="paas.test") as registry:
        yield registry


def files(marker: str, toml: str = "min_healthy_s = 5\n") -> dict[str, str]:
    return {"Procfile": "web: python app.py\n", "app.py": f"# {marker}\n", "paas.toml": toml}


def report(reg: TestRegistry, when: datetime, *instances: dict[str, Any], host: str = "m1") -> None:
    """Play machine agent `host` at time `when`."""
    ctx = reg.client.app.state.ctx  # type: ignore[attr-defined]
    body = HostReport.model_validate({"instances": list(instances)})
    with ctx.db.write() as session:
        apply_report(session, get_host(session, host), body, now=when, timeout_s=TIMEOUT_S)


def tick(reg: TestRegistry, when: datetime) -> None:
    """The registry's deadline tick at time `when`."""
    ctx = reg.client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.write() as session:
        expire_deadlines(session, now=when, timeout_s=TIMEOUT_S)
        roll_back_crash_loops(session, now=when, timeout_s=TIMEOUT_S)


def running(iid: int, **extra: Any) -> dict[str, Any]:
    return {"id": iid, "state": "running", "port": 5000 + iid, **extra}


def only_id(release: dict[str, Any]) -> int:
    [iid] = [i["id"] for i in release["instances"]]
    return iid


def serving(reg: TestRegistry, token: str) -> dict[int, bool]:
    """Release -> serve flag of what the agent of m1 is told to run."""
    return {d["release"]: d["serve"] for d in reg.desired("m1", token)["instances"]}


def v1_serving(reg: TestRegistry, token: str) -> int:
    """v1 active, running and routed (a first deploy has nothing to wait for)."""
    reg.create_app("shop")
    v1 = reg.deploy("shop", files("one"))
    old = only_id(v1)
    report(reg, at(0), running(old))
    assert reg.release("shop", 1)["status"] == "active"  # no window: nothing served before
    report(reg, at(0.1), running(old, routed=True))
    return old


def test_new_release_is_routed_only_after_min_healthy_s(reg: TestRegistry) -> None:
    token = reg.join("m1")
    old = v1_serving(reg, token)
    v2 = reg.deploy("shop", files("two"))
    new = only_id(v2)
    report(reg, at(1), running(old, routed=True), running(new))
    got = reg.release("shop", 2)
    assert (got["status"], got["stage"], got["min_healthy_s"]) == ("deploying", "healthy", 5)
    # Meanwhile only v1 is routed: the new instance is not in any proxy.
    assert serving(reg, token) == {1: True, 2: False}
    routing = reg.client.get("/v1/routing", headers=reg.admin).json()
    assert [s["host"] for s in routing["apps"][0]["servers"]] == ["m1"]
    report(reg, at(5.9), running(old, routed=True), running(new))  # a heartbeat: still 4.9 s
    tick(reg, at(5.9))
    assert reg.release("shop", 2)["status"] == "deploying"
    tick(reg, at(6.0))  # 5 s after it was healthy: the switch
    assert reg.release("shop", 2)["status"] == "active"
    assert reg.release("shop", 1)["status"] == "superseded"
    assert serving(reg, token) == {2: True}


def test_a_crash_in_the_window_fails_the_release_and_keeps_the_old_one(
    reg: TestRegistry,
) -> None:
    token = reg.join("m1")
    old = v1_serving(reg, token)
    new = only_id(reg.deploy("shop", files("crashes after 4 s")))
    report(reg, at(1), running(old, routed=True), running(new))
    report(
        reg,
        at(5),
        running(old, routed=True),
        {"id": new, "state": "backoff", "error": "exited with status 1 while running"},
    )
    got = reg.release("shop", 2)
    assert got["status"] == "failed"
    assert got["error"].startswith(
        f"instance {new} (web) on host m1 crashed (exited with status 1 while running)"
    )
    assert "did not stay healthy within 5 s before the switch; v1 keeps serving" in got["error"]
    assert reg.release("shop", 1)["status"] == "active"
    assert serving(reg, token) == {1: True}  # the new instance leaves; v1 never stopped
    tick(reg, at(60))
    assert reg.release("shop", 1)["status"] == "active"


@pytest.mark.parametrize(
    ("state", "error", "expected"),
    [
        ("unhealthy", "GET /health: HTTP 500", "turned unhealthy (GET /health: HTTP 500)"),
        (
            "failed",
            "exited with status 3 while running; gave up after 4 failed starts in a row\n"
            "Traceback (most recent call last):\nKeyError: 'DATABASE_URL'",
            "failed (exited with status 3 while running; gave up after 4 failed starts in a row)"
            "\nTraceback (most recent call last):\nKeyError: 'DATABASE_URL'",
        ),
    ],
)
def test_unhealthy_or_failed_in_the_window_fails_it_with_the_log_lines(
    reg: TestRegistry, state: str, error: str, expected: str
) -> None:
    token = reg.join("m1")
    old = v1_serving(reg, token)
    new = only_id(reg.deploy("shop", files("two")))
    report(reg, at(1), running(old, routed=True), running(new))
    report(reg, at(2), running(old, routed=True), {"id": new, "state": state, "error": error})
    got = reg.release("shop", 2)
    assert got["status"] == "failed"
    assert got["error"].startswith(f"instance {new} (web) on host m1 {expected}")
    assert reg.release("shop", 1)["status"] == "active"


def test_a_restart_before_it_was_ever_healthy_is_not_a_crash(reg: TestRegistry) -> None:
    """starting -> backoff -> starting -> running is a slow start, judged by health_timeout."""
    token = reg.join("m1")
    old = v1_serving(reg, token)
    new = only_id(reg.deploy("shop", files("two", "min_healthy_s = 0\n")))
    report(reg, at(1), running(old, routed=True), {"id": new, "state": "starting", "port": 6000})
    report(reg, at(2), running(old, routed=True), {"id": new, "state": "backoff", "error": "x"})
    report(reg, at(3), running(old, routed=True), running(new))
    assert reg.release("shop", 2)["status"] == "active"  # min_healthy_s = 0: at once


def crash_looping_v2(reg: TestRegistry, toml: str = "min_healthy_s = 1\n") -> tuple[int, int]:
    """v1 served, v2 passed its window and went live, then v2's instance crashes at 10 s."""
    reg.join("m1")
    old = v1_serving(reg, "")
    new = only_id(reg.deploy("shop", files("crashes under traffic", toml)))
    report(reg, at(1), running(old, routed=True), running(new))
    tick(reg, at(2))
    assert reg.release("shop", 2)["status"] == "active"
    report(reg, at(2.1), {"id": old, "state": "stopped"}, running(new, routed=True))
    report(reg, at(10), {"id": new, "state": "backoff", "error": "exited with status 1"})
    return old, new


def test_crash_loop_of_the_active_release_rolls_back(reg: TestRegistry) -> None:
    _old, new = crash_looping_v2(reg)
    got = reg.release("shop", 2)
    assert got["status"] == "active"
    assert got["crashing"].startswith(f"instance {new} (web) on host m1 crashed")
    # It keeps restarting: healthy a few seconds each time, never STABLE_AFTER_S.
    report(reg, at(11), {"id": new, "state": "starting", "port": 6001})
    report(reg, at(12), running(new, routed=True))
    report(reg, at(17), {"id": new, "state": "backoff", "error": "exited with status 1"})
    tick(reg, at(10 + CRASH_LOOP_S - 0.1))
    assert [r["version"] for r in list_releases(reg)] == [2, 1]  # not yet
    tick(reg, at(10 + CRASH_LOOP_S))
    v3 = reg.release("shop", 3)
    assert v3["description"] == (
        f"auto-rollback to v1: v2 crash-looped (instance {new} (web) on host m1 crashed"
        " (exited with status 1, 2 crashes))"
    )
    assert v3["artifact_sha256"] == reg.release("shop", 1)["artifact_sha256"]
    v2 = reg.release("shop", 2)
    assert v2["status"] == "active" and "rolled back automatically by v3" in v2["error"]
    tick(reg, at(10 + CRASH_LOOP_S + 1))  # one attempt per release, not one per tick
    assert len(list_releases(reg)) == 3
    # v2 no longer serves well: v3 switches in as soon as it is healthy, no window.
    report(reg, at(45), running(only_id(v3)), {"id": new, "state": "backoff"})
    assert reg.release("shop", 3)["status"] == "active", reg.release("shop", 3)
    assert reg.release("shop", 2)["status"] == "failed"  # never a rollback target again
    assert reg.release("shop", 3)["crashing"] is None


def list_releases(reg: TestRegistry) -> list[dict[str, Any]]:
    return reg.client.get("/v1/apps/shop/releases", headers=reg.admin).json()


def test_auto_rollback_false_only_reports_crashing(reg: TestRegistry) -> None:
    _old, new = crash_looping_v2(reg, "min_healthy_s = 1\nauto_rollback = false\n")
    tick(reg, at(10 + CRASH_LOOP_S * 3))
    assert [r["version"] for r in list_releases(reg)] == [2, 1]
    assert reg.release("shop", 2)["crashing"].startswith(f"instance {new} (web)")


def test_a_crash_is_forgotten_after_a_stable_run(reg: TestRegistry) -> None:
    _old, new = crash_looping_v2(reg)
    report(reg, at(11), running(new, routed=True))
    report(reg, at(11 + STABLE_AFTER_S - 1), running(new, routed=True))
    assert reg.release("shop", 2)["crashing"] is not None
    report(reg, at(11 + STABLE_AFTER_S), running(new, routed=True))  # a heartbeat
    assert reg.release("shop", 2)["crashing"] is None
    ctx = reg.client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.read() as session:
        assert not has_crash_loops(session, now=at(10 + CRASH_LOOP_S * 2))
    [instance] = reg.client.get("/v1/apps/shop/instances", headers=reg.admin).json()
    assert instance["crashes"] == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", (None, None)),
        ("[app]\nmin_healthy_s = 2.5\nauto_rollback = false\n", (2.5, False)),
        ("min_healthy_s = 0\nauto_rollback = true\n", (0.0, True)),
    ],
)
def test_paas_toml_settings(text: str, expected: tuple[float | None, bool | None]) -> None:
    manifest = parse_manifest(text)
    assert (manifest.min_healthy_s, manifest.auto_rollback) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("min_healthy_s = -1\n", "min_healthy_s must be between 0 and 3600 seconds"),
        ("min_healthy_s = 3601\n", "min_healthy_s must be between 0 and 3600 seconds"),
        ('min_healthy_s = "10s"\n', "min_healthy_s must be a number of seconds"),
        ("min_healthy_s = true\n", "min_healthy_s must be a number of seconds"),
        ('auto_rollback = "yes"\n', "auto_rollback must be true or false"),
    ],
)
def test_bad_paas_toml_settings_are_refused(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(text)


def test_the_default_window_is_10_s_and_a_deploy_without_the_key_keeps_the_apps(
    reg: TestRegistry,
) -> None:
    reg.join("m1")
    reg.create_app("shop")
    first = reg.deploy("shop", {"Procfile": "web: python app.py\n"})
    assert first["min_healthy_s"] == DEFAULT_MIN_HEALTHY_S == 10
    assert reg.deploy("shop", files("two", "min_healthy_s = 2\n"))["min_healthy_s"] == 2
    assert reg.deploy("shop", {"Procfile": "web: python app.py\n"})["min_healthy_s"] == 2
