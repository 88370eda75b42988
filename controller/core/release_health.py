"""What the registry makes of its instances' health over time: crashes, crash loops, and the
window a new release must stay healthy in before the previous one is stopped.

Agents report states, not events: an instance's report says `running`, `backoff`, `failed`...
but carries no restart count. So the registry counts what it sees itself: an instance that
leaves `running` for `unhealthy`, `backoff`, `stopped` or `failed` while it should run has
crashed (a crash always passes through `backoff` or `failed`, which last at least the
agent's first back-off, so a coalesced report does not hide it). `starting` is not a crash:
an agent that restarts re-adopts its processes through `starting` without killing them.

Pure functions over ORM rows with `now` passed in; controller/core/deploys.py calls them inside
its write transactions.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from common.manifest import DEFAULT_MIN_HEALTHY_S
from controller.store.models import App, Instance, Release

CRASH_STATES = frozenset({"unhealthy", "backoff", "stopped", "failed"})
# A crashed instance counts as recovered once it stayed healthy this long (the agent's
# supervisor uses the same rule, Policy.stable_after_s, before it forgets failed starts).
STABLE_AFTER_S = 10.0
# An active release whose web instances all crash-loop this long is rolled back.
CRASH_LOOP_S = 30.0
ERROR_TAIL_LINES = 20


def min_healthy_of(app: App) -> float:
    return DEFAULT_MIN_HEALTHY_S if app.min_healthy_s is None else app.min_healthy_s


def auto_rollback_of(app: App) -> bool:
    return app.auto_rollback is not False


def observe(instance: Instance, state: str, *, now: datetime) -> None:
    """Record a reported state change of `instance` (call before storing the new state)."""
    was = instance.state
    if state == "running" and was != "running":
        instance.running_since = now
    elif was == "running" and state in CRASH_STATES and instance.desired == "run":
        instance.crashes = (instance.crashes or 0) + 1
        instance.running_since = None
        if instance.crashing_since is None:
            instance.crashing_since = now


def settle(instance: Instance, *, now: datetime) -> bool:
    """Forget an instance's crash loop once it stayed healthy STABLE_AFTER_S; True if so."""
    if instance.crashing_since is None or instance.state != "running":
        return False
    since = instance.running_since
    if since is None or now - since < timedelta(seconds=STABLE_AFTER_S):
        return False
    instance.crashing_since = None
    return True


def web_instances(release: Release) -> list[Instance]:
    return [i for i in release.instances if i.desired == "run" and i.process == "web"]


def serves_well(release: Release) -> bool:
    """Some web instance of `release` is healthy and not crash-looping: worth keeping until
    its successor proved itself (otherwise the successor switches in as soon as healthy)."""
    return any(i.state == "running" and i.crashing_since is None for i in web_instances(release))


def window_s(release: Release) -> float:
    """How long the instances of deploying `release` must stay healthy before the switch."""
    active = next((r for r in release.app.releases if r.status == "active"), None)
    if active is None or active is release or not serves_well(active):
        return 0.0  # nothing serves that a crash could spare: switch as soon as healthy
    return release.min_healthy_s or 0.0


def crash_reason(instance: Instance) -> str:
    """`instance 7 (web) on host m1 crashed (exited with status 1 while running)` plus the
    log lines the agent sent, if any."""
    what = {
        "unhealthy": "turned unhealthy",
        "failed": "failed",
    }.get(instance.state, "crashed")
    count = instance.crashes or 0
    times = f", {count} crashes" if count > 1 else ""
    error = (instance.error or "").strip()
    first, _, rest = error.partition("\n")
    text = f"instance {instance.id} ({instance.process}) on host {instance.host.name} {what}"
    text += f" ({first}{times})" if first else (f" ({count} crashes)" if count > 1 else "")
    lines = rest.strip().splitlines()[-ERROR_TAIL_LINES:]
    return text + ("\n" + "\n".join(lines) if lines else "")


def crash_loop(release: Release, *, now: datetime) -> Instance | None:
    """The instance to blame when every web instance of `release` has been crash-looping for
    CRASH_LOOP_S or longer, else None."""
    web = web_instances(release)
    if not web or any(i.crashing_since is None for i in web):
        return None
    latest = max(i.crashing_since for i in web if i.crashing_since is not None)
    if now - latest < timedelta(seconds=CRASH_LOOP_S):
        return None
    return max(web, key=lambda i: (i.crashes or 0, i.id))


def crashing_summary(release: Release) -> str | None:
    """Why `paas status` says `crashing`: the first crash-looping web instance, else None."""
    looping = [i for i in web_instances(release) if i.crashing_since is not None]
    if not looping:
        return None
    text = crash_reason(looping[0])
    if len(looping) > 1:
        head, sep, tail = text.partition("\n")
        text = f"{head} (and {len(looping) - 1} more instances){sep}{tail}"
    return text
