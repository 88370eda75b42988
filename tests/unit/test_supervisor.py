"""The supervision state machine with a fake clock and a fake spawner: no processes."""

from __future__ import annotations

import signal
from typing import get_args

import pytest

from agent.errors import AgentError
from agent.machine.run.supervisor import Policy, State, Supervisor, wire_state


class FakeProcess:
    pid = 4242

    def __init__(self) -> None:
        self.status: int | None = None
        self.signals: list[int] = []
        self.dies_on: set[int] = {signal.SIGTERM, signal.SIGKILL}

    def poll(self) -> int | None:
        return self.status

    def signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig in self.dies_on and self.status is None:
            self.status = -sig


class FakeLauncher:
    def __init__(self, *, fail_spawn: bool = False) -> None:
        self.spawned: list[FakeProcess] = []
        self.fail_spawn = fail_spawn

    def spawn(self) -> FakeProcess:
        if self.fail_spawn:
            raise AgentError("no such command")
        proc = FakeProcess()
        self.spawned.append(proc)
        return proc

    def log_tail(self) -> str:
        return "Traceback (most recent call last):\nImportError: no module named flask"

    @property
    def current(self) -> FakeProcess:
        return self.spawned[-1]


def _sup(**policy: float) -> tuple[Supervisor, FakeLauncher]:
    launcher = FakeLauncher()
    return Supervisor("web#1", launcher, policy=Policy(**policy)), launcher  # type: ignore[arg-type]


def _pass_health(sup: Supervisor, now: float) -> None:
    assert sup.health_due(now)
    sup.mark_checked(now)
    sup.record_health(True, now, generation=sup.generation, detail="200")


def test_start_then_health_passes_running() -> None:
    sup, launcher = _sup()
    sup.start(0.0)
    assert sup.state == "starting"
    assert len(launcher.spawned) == 1
    assert sup.transition(0.1) == "starting"
    _pass_health(sup, 0.2)
    assert sup.state == "running"
    assert sup.transition(1.0) == "running"


def test_crash_backoff_grows_then_fatal_after_limit() -> None:
    sup, launcher = _sup(max_failed_starts=3, backoff_base_s=0.5)
    sup.start(0.0)
    now = 0.0
    delays = []
    for _ in range(3):
        launcher.current.status = 1
        assert sup.transition(now) == "backoff"
        started = len(launcher.spawned)
        # not yet: waits out the delay
        t = now
        while sup.transition(t) == "backoff":
            t += 0.05
        delays.append(round(t - now, 2))
        assert sup.state == "starting"
        assert len(launcher.spawned) == started + 1
        now = t
    assert delays == pytest.approx([0.5, 1.0, 2.0], abs=0.051)
    launcher.current.status = 1
    assert sup.transition(now) == "fatal"
    assert wire_state(sup.state) == "failed"
    assert "gave up after 4 failed starts" in (sup.reason or "")
    assert "ImportError: no module named flask" in (sup.reason or "")
    assert sup.transition(now + 100) == "fatal"
    assert len(launcher.spawned) == 4


def test_running_instance_that_exits_is_restarted() -> None:
    sup, launcher = _sup(stable_after_s=10.0)
    sup.start(0.0)
    _pass_health(sup, 0.1)
    launcher.current.status = 0
    assert sup.transition(20.0) == "exited"
    assert wire_state(sup.state) == "stopped"
    assert "exited with status 0 while running" in (sup.reason or "")
    assert sup.transition(20.1) == "backoff"  # it had run well: the first, shortest delay
    assert sup.transition(20.5) == "backoff"
    assert sup.transition(20.6) == "starting"
    assert len(launcher.spawned) == 2
    _pass_health(sup, 20.7)
    assert sup.state == "running"


def test_healthy_then_crashing_loop_still_ends_fatal() -> None:
    """Passing one check and dying right after is not a good start (supervisord's startsecs)."""
    sup, launcher = _sup(stable_after_s=10.0, max_failed_starts=2, backoff_base_s=0.5)
    sup.start(0.0)
    now = 0.0
    states = []
    for _ in range(3):
        _pass_health(sup, now + 0.1)
        launcher.current.status = 1
        sup.transition(now + 0.2)  # exited
        states.append(sup.transition(now + 0.3))
        now += 10.0  # past any back-off delay
        sup.transition(now)
    assert states == ["backoff", "backoff", "fatal"]
    assert "gave up after 3 failed starts" in (sup.reason or "")
    assert len(launcher.spawned) == 3


def test_adopted_process_is_checked_before_it_counts_as_running() -> None:
    sup, launcher = _sup()
    proc = FakeProcess()
    sup.adopt(proc, 5.0)
    assert sup.state == "starting" and sup.pid == 4242
    assert launcher.spawned == []  # nothing new was started
    _pass_health(sup, 5.1)
    assert sup.state == "running"
    proc.status = -1  # it dies later: restarted like any other instance
    assert sup.transition(30.0) == "exited"
    sup.transition(30.1)
    assert sup.transition(31.0) == "starting"
    assert len(launcher.spawned) == 1
    sup.stop(31.1)
    with pytest.raises(AgentError):
        sup.adopt(FakeProcess(), 31.2)  # only a stopped supervisor adopts


def test_adopted_process_that_never_answers_is_replaced_not_fatal() -> None:
    sup, launcher = _sup(start_timeout_s=5.0, backoff_base_s=0.5)
    proc = FakeProcess()
    sup.adopt(proc, 0.0)
    sup.mark_checked(0.0)
    sup.record_health(False, 0.1, generation=sup.generation, detail="timed out")
    assert sup.transition(5.0) == "backoff"
    assert signal.SIGKILL in proc.signals
    assert sup.transition(5.5) == "starting"
    assert len(launcher.spawned) == 1  # a fresh process of our own
    assert sup.transition(10.5) == "fatal"  # ours: the usual rule applies


def test_every_state_maps_to_a_wire_state() -> None:
    assert {s: wire_state(s) for s in get_args(State)} == {
        "stopped": "stopped",
        "starting": "starting",
        "running": "running",
        "unhealthy": "unhealthy",
        "backoff": "backoff",
        "stopping": "stopping",
        "exited": "stopped",
        "fatal": "failed",
    }


def test_health_timeout_fails_and_kills() -> None:
    sup, launcher = _sup(start_timeout_s=30.0)
    sup.start(0.0)
    proc = launcher.current
    sup.mark_checked(0.0)
    sup.record_health(False, 0.1, generation=sup.generation, detail="connection refused")
    assert sup.transition(29.9) == "starting"
    assert sup.transition(30.0) == "fatal"
    assert signal.SIGKILL in proc.signals
    assert "did not pass within 30s" in (sup.reason or "")
    assert "connection refused" in (sup.reason or "")
    assert "ImportError" in (sup.reason or "")


def test_stale_health_result_is_ignored() -> None:
    sup, launcher = _sup()
    sup.start(0.0)
    old = sup.generation
    launcher.current.status = 1
    sup.transition(0.1)
    sup.transition(1.0)  # restarted
    sup.record_health(True, 1.0, generation=old)
    assert sup.state == "starting"


def test_running_becomes_unhealthy_then_recovers() -> None:
    sup, _ = _sup(unhealthy_after=3, running_check_interval_s=3.0)
    sup.start(0.0)
    _pass_health(sup, 0.1)
    now = 0.1
    for _ in range(3):
        now += 3.0
        assert sup.health_due(now)
        sup.record_health(False, now, generation=sup.generation, detail="answered 500")
    assert sup.state == "unhealthy"
    assert sup.reason == "answered 500"
    sup.record_health(True, now + 3, generation=sup.generation)
    assert sup.state == "running"


def test_stop_escalates_to_sigkill_after_grace() -> None:
    sup, launcher = _sup(stop_grace_s=10.0)
    sup.start(0.0)
    _pass_health(sup, 0.1)
    proc = launcher.current
    proc.dies_on = {signal.SIGKILL}  # ignores SIGTERM
    sup.stop(1.0)
    assert proc.signals == [signal.SIGTERM]
    assert sup.transition(5.0) == "stopping"
    assert sup.transition(10.9) == "stopping"
    sup.transition(11.0)
    assert proc.signals == [signal.SIGTERM, signal.SIGKILL]
    assert sup.transition(11.1) == "stopped"


def test_stop_with_drain_waits_before_sigterm() -> None:
    sup, launcher = _sup()
    sup.start(0.0)
    _pass_health(sup, 0.1)
    proc = launcher.current
    sup.stop(1.0, drain_s=1.0)
    assert proc.signals == []
    assert sup.transition(1.5) == "stopping"
    sup.transition(2.0)
    assert proc.signals == [signal.SIGTERM]
    assert sup.transition(2.1) == "stopped"


def test_stop_in_backoff_is_immediate() -> None:
    sup, launcher = _sup()
    sup.start(0.0)
    launcher.current.status = 1
    assert sup.transition(0.1) == "backoff"
    sup.stop(0.2)
    assert sup.state == "stopped"
    assert sup.transition(10.0) == "stopped"
    assert len(launcher.spawned) == 1


def test_spawn_error_counts_as_failed_start() -> None:
    launcher = FakeLauncher(fail_spawn=True)
    sup = Supervisor("web#2", launcher, policy=Policy(max_failed_starts=1))  # type: ignore[arg-type]
    sup.start(0.0)
    assert sup.state == "backoff"
    assert "no such command" in (sup.reason or "")
    assert sup.transition(0.5) == "fatal"


def test_a_proven_process_that_starts_crashing_is_restarted_forever() -> None:
    """Once it ran well, a crash loop (its database went away) never ends in fatal: capped
    back-off forever, the reason saying it is crashing; a bad release still fails fast."""
    sup, launcher = _sup(stable_after_s=10.0, max_failed_starts=2, backoff_base_s=0.5)
    sup.start(0.0)
    _pass_health(sup, 0.1)
    now = 20.0  # ran well past stable_after_s
    states = []
    for _ in range(12):
        launcher.current.status = 1
        sup.transition(now)  # exited
        states.append(sup.transition(now + 0.01))
        now += 60.0  # past the capped back-off
        sup.transition(now)
        assert sup.state == "starting"
        now += 0.1
    assert set(states) == {"backoff"}
    assert len(launcher.spawned) == 13
    assert (sup.reason or "").startswith("crashing: ") and "restart 12 in" in (sup.reason or "")
