"""Process supervision as a state machine, in the style of supervisord.

    stopped --start()--> starting --(health check passes)--> running <--> unhealthy
                           |  ^                                  |
                  (exits)  |  | (after a growing delay:           | (exits)
                           v  |  0.5s, 1s, 2s ...)               v
                         backoff <------------------------------ exited
                           |
      (more than N failed starts in a row, or no passing check within the start timeout)
                           v
                         fatal            any state --stop()--> stopping --(exit)--> stopped

- `exited`: the process ended on its own after it had been healthy; the next tick decides
  (back-off, or fatal when it keeps dying). A run counts as a success, and ends a series of
  failed starts, only once it stayed healthy for `stable_after_s` (supervisord's startsecs):
  an app that passes one check and then crashes every time still ends up fatal.
- `unhealthy`: running, but its continuous health checks fail; the agent takes it out of the
  proxy until a check passes again. Not every failed check counts the same (`Verdict`): a
  refused connection means nothing listens any more (dead: out at once); an answer that fails
  counts towards `unhealthy_after`; a check that times out while the process lives and its
  port listens is `busy` (a single worker serving a slow request: requests queue in the
  kernel backlog and will be answered), which also counts towards `unhealthy_after` but keeps
  the instance routed until then, and says "busy" in the instance's reason meanwhile.
- `fatal`: gave up; the reason carries the last lines of the instance's log. Only a process
  that never ran well gets there: once it stayed healthy for `stable_after_s` (or was
  adopted), a crash loop backs off (capped) and restarts forever, its reason saying so.
- `adopt()`: a process an earlier agent run started enters `starting` like a spawned one; if
  it does not pass a check within the start timeout it is killed and replaced (back-off),
  never given up on: it had started fine once.

`transition(now)` is called on every tick with `now` passed in, so tests own the clock; the OS
actions sit behind `Launcher`/`ProcessHandle`, so the logic is tested without processes.
Health checks run elsewhere (they are async I/O); their results come in via `record_health`.
`wire_state` is the one place where these states become the wire's `InstanceState`.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from typing import Literal, Protocol

from agent.errors import AgentError
from agent.metrics import RESTARTS
from common.wire import InstanceState

log = logging.getLogger(__name__)

Verdict = Literal["fail", "busy", "dead"]  # how a failed check failed (see above)

State = Literal[
    "stopped", "starting", "running", "unhealthy", "backoff", "stopping", "exited", "fatal"
]

_WIRE: dict[State, InstanceState] = {
    "stopped": "stopped",
    "starting": "starting",
    "running": "running",
    "unhealthy": "unhealthy",
    "backoff": "backoff",
    "stopping": "stopping",
    "exited": "stopped",  # for the one tick before the restart decision
    "fatal": "failed",
}


def wire_state(state: State) -> InstanceState:
    """The state a report carries for a supervisor state."""
    return _WIRE[state]


class ProcessHandle(Protocol):
    @property
    def pid(self) -> int:
        """The process (and process group) id."""

    def poll(self) -> int | None:
        """Exit status once exited (and reaped), else None."""

    def signal(self, sig: int) -> None:
        """Signal the process group."""


class Launcher(Protocol):
    def spawn(self) -> ProcessHandle:
        """Start the process; raise AgentError when it cannot start at all."""

    def log_tail(self) -> str:
        """The last ~20 lines of the instance's log."""


def exit_text(launcher: object, status: int) -> str:
    """How an exit is told: the launcher's own words when it knows more than the status
    (an optional `exit_note()`, e.g. "out of memory (limit 64M)" from the cgroup), else the
    status."""
    note = getattr(launcher, "exit_note", None)
    text = note() if callable(note) else None
    return text if isinstance(text, str) and text else f"exited with status {status}"


@dataclass(frozen=True)
class Policy:
    max_failed_starts: int = 3  # more than this many failed starts in a row -> fatal
    start_timeout_s: float = 30.0  # a health check must pass within this, else fatal
    stable_after_s: float = 10.0  # healthy this long: the run counts as a good start
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
        self.reason: str | None = None  # why it is fatal / backing off / unhealthy
        self.generation = 0  # bumps on every spawn; stale health results are ignored
        self.failed_starts = 0
        # Once it ran well (healthy for stable_after_s, or adopted: it had started fine), a
        # crash loop never ends in fatal: a database outage must not leave the app down for
        # good. Capped back-off forever, with the reason shown; only a process that never
        # ran well (a bad release) is given up on, so a deploy fails fast.
        self._proven = False
        self._handle: ProcessHandle | None = None
        self._started_at = 0.0
        self._healthy_since: float | None = None
        self._adopted = False  # the current process was adopted, not spawned by us
        self._exit_status: str | None = None  # how the last exit is told
        self._next_start_at = 0.0
        self._next_check_at = 0.0
        self._failed_checks = 0
        self._busy_checks = 0  # consecutive failed checks that were timeouts of a live process
        self._last_check_detail = ""
        self._term_at: float | None = None
        self._kill_at: float | None = None
        self._killed = False

    # ---- commands -----------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Start from stopped or fatal (a fresh run: counters reset)."""
        if self.state not in ("stopped", "fatal"):
            return
        self.failed_starts = 0
        self._proven = False
        self.reason = None
        self._spawn(now)

    def adopt(self, handle: ProcessHandle, now: float) -> None:
        """Take over a process an earlier agent run started: `starting` until a check passes,
        so it is routed again only once it answers."""
        if self.state not in ("stopped", "fatal"):
            raise AgentError(f"{self.name}: cannot adopt a process while {self.state}")
        self.failed_starts = 0
        self._proven = True
        self.reason = None
        self._begin(handle, now)
        self._adopted = True
        log.info("%s: adopted running pid %d", self.name, handle.pid)

    def stop(self, now: float, *, drain_s: float = 0.0) -> None:
        """Stop: wait `drain_s` (in-flight requests), SIGTERM the group, SIGKILL after grace."""
        if self.state in ("stopped", "stopping"):
            return
        if not self.alive:
            self._handle = None
            self._set("stopped")
            return
        self._term_at = now + max(0.0, drain_s)
        self._kill_at = None
        self._killed = False
        self._set("stopping")
        self.transition(now)

    # ---- ticks --------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._handle is not None and self._handle.poll() is None

    @property
    def pid(self) -> int | None:
        return self._handle.pid if self._handle is not None else None

    def transition(self, now: float) -> State:
        """Advance on the clock and on the process's exit; returns the (new) state."""
        exit_status = self._reap()
        if self.state == "starting":
            if exit_status is not None:
                what = exit_text(self._launcher, exit_status)
                self._failed_start(now, f"{what} before it was healthy")
            elif now - self._started_at >= self.policy.start_timeout_s and self._adopted:
                # Not ours to give up on: it had been started fine; start a fresh one.
                if self._handle is not None:
                    self._handle.signal(signal.SIGKILL)
                    self._handle = None
                self._failed_start(now, "the adopted process did not pass its health check")
            elif now - self._started_at >= self.policy.start_timeout_s:
                self._fatal(
                    f"health check did not pass within {self.policy.start_timeout_s:g}s"
                    + (f" ({self._last_check_detail})" if self._last_check_detail else ""),
                    kill=True,
                )
        elif self.state in ("running", "unhealthy"):
            if exit_status is not None:
                self._exit_status = exit_text(self._launcher, exit_status)
                self.reason = f"{self._exit_status} while running"
                log.info("%s %s", self.name, self.reason)
                self._set("exited")
        elif self.state == "exited":
            healthy_for = now - (self._healthy_since if self._healthy_since is not None else now)
            if healthy_for >= self.policy.stable_after_s:
                self.failed_starts = 0  # it had run well: this is the first crash of a series
                self._proven = True
            self._failed_start(now, f"{self._exit_status} while running")
        elif self.state == "backoff":
            if now >= self._next_start_at:
                RESTARTS.inc()
                self._spawn(now)
        elif self.state == "stopping":
            if self._handle is None:
                self._set("stopped")
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

    @property
    def started_at(self) -> float:
        """When the current process started (monotonic): a worker, which has no port to check,
        counts as healthy once it has stayed up a while."""
        return self._started_at

    def health_due(self, now: float) -> bool:
        return self.state in ("starting", "running", "unhealthy") and now >= self._next_check_at

    @property
    def busy(self) -> bool:
        """Running, but its last check(s) timed out while it was alive and listening."""
        return self.state == "running" and self._busy_checks > 0

    def record_health(
        self,
        ok: bool,
        now: float,
        *,
        generation: int,
        detail: str = "",
        verdict: Verdict = "fail",
    ) -> None:
        """Feed a health check result taken for process `generation`; `verdict` says how a
        failed one failed."""
        if generation != self.generation or self.state not in ("starting", "running", "unhealthy"):
            return
        self._last_check_detail = detail
        if ok:
            self._failed_checks = 0
            self._busy_checks = 0
            self.reason = None
            if self.state != "running":
                if self.state == "starting":
                    self._healthy_since = now
                    log.info("%s is healthy", self.name)
                else:
                    log.info("%s passes its health check again", self.name)
                self._set("running")
            self._next_check_at = now + self.policy.running_check_interval_s
            return
        if self.state == "starting":
            self._next_check_at = now + self.policy.starting_check_interval_s
            return
        self._next_check_at = now + self.policy.running_check_interval_s
        self._failed_checks += 1
        self._busy_checks = self._busy_checks + 1 if verdict == "busy" else 0
        if self.state != "running":
            return
        if verdict == "dead":
            self.reason = detail or "health check refused"
            log.warning("%s does not accept connections, out of service: %s", self.name, detail)
            self._set("unhealthy")
        elif self._failed_checks >= self.policy.unhealthy_after:
            self.reason = detail or "health check failed"
            log.warning(
                "%s failed %d health checks in a row, out of service: %s",
                self.name,
                self._failed_checks,
                self.reason,
            )
            self._set("unhealthy")
        elif verdict == "busy":
            self.reason = (
                f"busy: {self._busy_checks} health check(s) in a row timed out while the process"
                f" runs and listens (out of service after {self.policy.unhealthy_after}): {detail}"
            )

    def mark_checked(self, now: float) -> None:
        """A check was launched: do not launch another before the result is in."""
        self._next_check_at = now + 3600.0

    # ---- internals ----------------------------------------------------------------------

    def _spawn(self, now: float) -> None:
        try:
            handle = self._launcher.spawn()
        except AgentError as exc:
            self._handle = None
            self.generation += 1
            self._started_at = now
            self._set("starting")
            self._failed_start(now, f"could not start: {exc}")
            return
        self._begin(handle, now)

    def _begin(self, handle: ProcessHandle, now: float) -> None:
        self.generation += 1
        self._handle = handle
        self._failed_checks = 0
        self._busy_checks = 0
        self._last_check_detail = ""
        self._next_check_at = now
        self._started_at = now
        self._healthy_since = None
        self._adopted = False
        self._set("starting")

    def _reap(self) -> int | None:
        """The exit status if the process exited since the last tick (then forgets it)."""
        if self._handle is None:
            return None
        status = self._handle.poll()
        if status is None:
            return None
        self._handle = None
        if self.state == "stopping":
            self._set("stopped")
        return status

    def _failed_start(self, now: float, what: str) -> None:
        self.failed_starts += 1
        if self.failed_starts > self.policy.max_failed_starts and not self._proven:
            self._fatal(f"{what}; gave up after {self.failed_starts} failed starts in a row")
            return
        delay = min(
            self.policy.backoff_cap_s,
            self.policy.backoff_base_s * 2 ** min(self.failed_starts - 1, 30),
        )
        self._next_start_at = now + delay
        self.reason = (
            f"crashing: {what}; restart {self.failed_starts} in {delay:.0f}s"
            if self.failed_starts > self.policy.max_failed_starts
            else what
        )
        log.info("%s %s; restarting in %.1fs", self.name, what, delay)
        self._set("backoff")

    def _fatal(self, what: str, *, kill: bool = False) -> None:
        if kill and self._handle is not None:
            self._handle.signal(signal.SIGKILL)
        tail = self._launcher.log_tail()
        self.reason = what + (f"\n{tail}" if tail else "")
        log.error("%s failed: %s", self.name, what)
        self._set("fatal")

    def _set(self, state: State) -> None:
        if state != self.state:
            log.debug("%s: %s -> %s", self.name, self.state, state)
        self.state = state
