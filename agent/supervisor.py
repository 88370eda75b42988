"""Process supervision as a state machine, in the style of supervisord.

    stopped -> starting --(health check passes)--> running <--> unhealthy
                  |  ^                                |
         (exits)  v  | (delay: 0.5s, 1s, 2s ...)      | (exits)
                backoff <-----------------------------+
                  |
     (more than N failed starts in a row, or no passing check within the start timeout)
                  v
                failed          any state --stop()--> stopping --(exit or SIGKILL)--> stopped

`transition(now)` is called on every tick with `now` passed in, so tests own the clock; the OS
actions sit behind `Launcher`/`ProcessHandle`, so the logic is tested without processes.
Health checks run elsewhere (they are async I/O); their results come in via `record_health`.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from typing import Literal, Protocol

from agent.errors import AgentError

log = logging.getLogger(__name__)

State = Literal["stopped", "starting", "running", "unhealthy", "backoff", "stopping", "failed"]


class ProcessHandle(Protocol):
    def poll(self) -> int | None:
        """Exit status once exited (and reaped), else None."""

    def signal(self, sig: int) -> None:
        """Signal the process group."""


class Launcher(Protocol):
    def spawn(self) -> ProcessHandle:
        """Start the process; raise AgentError when it cannot start at all."""

    def log_tail(self) -> str:
        """The last ~20 lines of the instance's log."""


@dataclass(frozen=True)
class Policy:
    max_failed_starts: int = 3  # more than this many failed starts in a row -> failed
    start_timeout_s: float = 30.0  # a health check must pass within this, else failed
    stop_grace_s: float = 10.0  # SIGTERM -> this long -> SIGKILL
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    unhealthy_after: int = 3  # consecutive failed checks while running
    starting_check_interval_s: float = 0.03
    running_check_interval_s: float = 3.0


class Supervisor:
    """Supervises one instance's process. Not thread-safe: drive it from one loop."""

    def __init__(self, name: str, launcher: Launcher, *, policy: Policy | None = None) -> None:
        self.name = name
        self.policy = policy or Policy()
        self._launcher = launcher
        self.state: State = "stopped"
        self.reason: str | None = None  # why it is failed / backing off / unhealthy
        self.generation = 0  # bumps on every spawn; stale health results are ignored
        self.failed_starts = 0
        self._handle: ProcessHandle | None = None
        self._started_at = 0.0
        self._next_start_at = 0.0
        self._next_check_at = 0.0
        self._failed_checks = 0
        self._last_check_detail = ""
        self._term_at: float | None = None
        self._kill_at: float | None = None
        self._killed = False

    # ---- commands -----------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Start from stopped or failed (a fresh run: counters reset)."""
        if self.state not in ("stopped", "failed"):
            return
        self.failed_starts = 0
        self.reason = None
        self._spawn(now)

    def stop(self, now: float, *, drain_s: float = 0.0) -> None:
        """Stop: wait `drain_s` (in-flight requests), SIGTERM the group, SIGKILL after grace."""
        if self.state in ("stopped", "stopping"):
            return
        if not self.alive:
            self._set("stopped", now)
            return
        self._term_at = now + max(0.0, drain_s)
        self._kill_at = None
        self._killed = False
        self._set("stopping", now)
        self.transition(now)

    # ---- ticks --------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._handle is not None and self._handle.poll() is None

    def transition(self, now: float) -> State:
        """Advance on the clock and on the process's exit; returns the (new) state."""
        exit_status = self._reap()
        if self.state == "starting":
            if exit_status is not None:
                self._failed_start(now, f"exited with status {exit_status} before it was healthy")
            elif now - self._started_at >= self.policy.start_timeout_s:
                self._fatal(
                    now,
                    f"health check did not pass within {self.policy.start_timeout_s:g}s"
                    + (f" ({self._last_check_detail})" if self._last_check_detail else ""),
                    kill=True,
                )
        elif self.state in ("running", "unhealthy"):
            if exit_status is not None:
                # It had been healthy, so this is the first failure of a new series.
                self.failed_starts = 0
                self._failed_start(now, f"exited with status {exit_status} while running")
        elif self.state == "backoff":
            if now >= self._next_start_at:
                self._spawn(now)
        elif self.state == "stopping":
            if self._handle is None:
                self._set("stopped", now)
            elif self._term_at is not None and now >= self._term_at:
                self._term_at = None
                self._handle.signal(signal.SIGTERM)
                self._kill_at = now + self.policy.stop_grace_s
            elif self._kill_at is not None and now >= self._kill_at and not self._killed:
                log.info(
                    "%s did not stop within %gs, sending SIGKILL",
                    self.name,
                    self.policy.stop_grace_s,
                )
                self._handle.signal(signal.SIGKILL)
                self._killed = True
        return self.state

    def health_due(self, now: float) -> bool:
        return self.state in ("starting", "running", "unhealthy") and now >= self._next_check_at

    def record_health(self, ok: bool, now: float, *, generation: int, detail: str = "") -> None:
        """Feed a health check result taken for process `generation`."""
        if generation != self.generation or self.state not in ("starting", "running", "unhealthy"):
            return
        self._last_check_detail = detail
        interval = (
            self.policy.starting_check_interval_s
            if self.state == "starting"
            else self.policy.running_check_interval_s
        )
        if ok:
            self._failed_checks = 0
            self.reason = None
            if self.state == "starting":
                self.failed_starts = 0  # a healthy start ends a series of failed ones
            if self.state != "running":
                self._set("running", now)
            self._next_check_at = now + self.policy.running_check_interval_s
            return
        self._next_check_at = now + interval
        if self.state == "starting":
            return
        self._failed_checks += 1
        if self.state == "running" and self._failed_checks >= self.policy.unhealthy_after:
            self.reason = detail or "health check failed"
            self._set("unhealthy", now)

    def mark_checked(self, now: float) -> None:
        """A check was launched: do not launch another before the result is in."""
        self._next_check_at = now + 3600.0

    # ---- internals ----------------------------------------------------------------------

    def _spawn(self, now: float) -> None:
        self.generation += 1
        self._failed_checks = 0
        self._last_check_detail = ""
        self._next_check_at = now
        self._started_at = now
        try:
            self._handle = self._launcher.spawn()
        except AgentError as exc:
            self._handle = None
            self._set("starting", now)
            self._failed_start(now, f"could not start: {exc}")
            return
        self._set("starting", now)

    def _reap(self) -> int | None:
        """The exit status if the process exited since the last tick (then forgets it)."""
        if self._handle is None:
            return None
        status = self._handle.poll()
        if status is None:
            return None
        self._handle = None
        if self.state == "stopping":
            self._set("stopped", None)
        return status

    def _failed_start(self, now: float, what: str) -> None:
        self.failed_starts += 1
        if self.failed_starts > self.policy.max_failed_starts:
            self._fatal(now, f"{what}; gave up after {self.failed_starts} failed starts in a row")
            return
        delay = min(
            self.policy.backoff_cap_s,
            self.policy.backoff_base_s * 2 ** (self.failed_starts - 1),
        )
        self._next_start_at = now + delay
        self.reason = what
        log.info("%s %s; restarting in %.1fs", self.name, what, delay)
        self._set("backoff", now)

    def _fatal(self, now: float, what: str, *, kill: bool = False) -> None:
        if kill and self._handle is not None:
            self._handle.signal(signal.SIGKILL)
        tail = self._launcher.log_tail()
        self.reason = what + (f"\n{tail}" if tail else "")
        log.error("%s failed: %s", self.name, what)
        self._set("failed", now)

    def _set(self, state: State, now: float | None) -> None:
        if state != self.state:
            log.debug("%s: %s -> %s", self.name, self.state, state)
        self.state = state
