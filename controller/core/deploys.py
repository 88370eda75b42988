"""The deploy state machine of docs/api.md "How a deploy moves", driven by agent reports.

Every function here runs inside one write transaction (`Database.write()`), takes `now`
explicitly so tests own the clock, and bumps the revision when it changes what agents see.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from common.manifest import (
    DEFAULT_HEALTH_TIMEOUT_S,
    DEFAULT_WORKER_COUNT,
    Manifest,
    worker_types,
)
from common.wire import HostReport
from controller.core.metrics import DEPLOYS, SCHEDULING_SECONDS
from controller.core.placement import HostSlot, place
from controller.core.release_health import crash_reason, min_healthy_of, observe, settle, window_s
from controller.errors import Conflict
from controller.store.db import bump, next_instance_id
from controller.store.models import App, Domain, Host, Instance, Release

log = logging.getLogger("paas.registry")

RELEASE_PROCESS = "release"  # the Procfile type run once per deploy, before any instance

NO_HOST_ERROR = "no machine host is up to run it"


def add_domains(session: Session, app: App, domains: list[str]) -> None:
    """Attach domains to `app`; a domain another app owns is a conflict."""
    owned = {d.domain for d in app.domains}
    for name in domains:
        if name in owned:
            continue
        other = session.execute(select(Domain).where(Domain.domain == name)).scalar_one_or_none()
        if other is not None:
            raise Conflict(f"domain {name} is already used by app {other.app.name}")
        app.domains.append(Domain(domain=name))
        owned.add(name)
    session.flush()


def create_release(
    session: Session,
    app: App,
    *,
    artifact_sha256: str,
    processes: dict[str, str],
    manifest: Manifest,
    description: str,
    now: datetime,
    timeout_s: float,
    release_phase: bool = False,
) -> Release:
    """Create the next release of `app`, place its instances, and start deploying it.

    The config snapshot is the app's config vars now. The deploy's deadline is `timeout_s`
    (fetching and installing) plus the release's health timeout, stored with the release.
    With `release_phase` and a `release:` Procfile line, nothing is placed yet: the caller
    runs the release phase (controller/core/release_phase.py), which then calls `place_release`.
    """
    if manifest.instances is not None:
        app.instances = manifest.instances
    if manifest.constraints is not None:
        app.constraints = manifest.constraints
    if manifest.memory_mb is not None:
        app.memory_mb = manifest.memory_mb
    if manifest.data is not None:
        app.keeps_data = manifest.data
    pin_data_host(session, app)
    if manifest.domains:
        add_domains(session, app, manifest.domains)
    if manifest.min_healthy_s is not None:
        app.min_healthy_s = manifest.min_healthy_s
    if manifest.auto_rollback is not None:
        app.auto_rollback = manifest.auto_rollback
    if manifest.health_check_timeout is not None:
        app.health_check_timeout_s = manifest.health_check_timeout
    if manifest.health_threshold is not None:
        app.health_threshold = manifest.health_threshold
    version = max((r.version for r in app.releases), default=0) + 1
    for other in app.releases:
        if other.status == "deploying":
            fail_release(session, other, f"superseded by release {version}")
    health_timeout = manifest.health_timeout or DEFAULT_HEALTH_TIMEOUT_S
    min_healthy = min_healthy_of(app)
    release = Release(
        version=version,
        artifact_sha256=artifact_sha256,
        processes=processes,
        health_path=manifest.health_path or app.health_path,
        health_timeout_s=health_timeout,
        description=description,
        config={v.key: v.value for v in app.config_vars},
        secret_keys=[v.key for v in app.config_vars if v.secret],
        status="deploying",
        created_at=now,
        deadline_at=now + timedelta(seconds=timeout_s + health_timeout),
        min_healthy_s=min_healthy,
    )
    app.releases.append(release)
    session.flush()
    log.info("release %s v%d created (%s)", app.name, version, description)
    if release_phase and RELEASE_PROCESS in processes:
        return release  # placed once its release phase passed
    return place_release(session, release, now=now)


def awaits_release_phase(release: Release) -> bool:
    """A deploying release with a `release:` command and nothing placed yet: its release
    phase runs (a placed release always has instances, or is active or failed)."""
    return (
        release.status == "deploying"
        and RELEASE_PROCESS in (release.processes or {})
        and not release.instances
    )


def place_release(session: Session, release: Release, *, now: datetime) -> Release:
    """Place the instances of every process type of a deploying release."""
    app, version, processes = release.app, release.version, release.processes
    counts = process_counts(app, processes)
    if not any(counts.values()):
        activate_release(session, release)
        return release
    names = []
    for process, count in counts.items():
        placed = place_hosts(session, app, count, process=process) if count else []
        if count and not placed:
            wanted = ", ".join(f"{k}={v}" for k, v in sorted((app.constraints or {}).items()))
            reason = f"no up machine host has the labels {wanted}" if wanted else NO_HOST_ERROR
            fail_release(session, release, reason)
            return release
        for host in placed:
            release.instances.append(new_instance(session, app, process, host, now))
            names.append(f"{process}@{host.name}")
        session.flush()
    log.info("release %s v%d placed: %s", app.name, version, ", ".join(names))
    bump(session, desired=True)
    return release


def process_counts(app: App, processes: dict[str, str]) -> dict[str, int]:
    """Instances wanted per Procfile process type: web from `app.instances`, each worker type
    from `app.process_counts` (DEFAULT_WORKER_COUNT when never scaled)."""
    counts = {"web": app.instances}
    scaled = app.process_counts or {}
    for kind in worker_types(processes):
        counts[kind] = scaled.get(kind, DEFAULT_WORKER_COUNT)
    return counts


def placement_key(app: str, process: str) -> str:
    """Placement spreads and sticks per (app, process type): web and a worker of one app are
    placed independently. App names cannot contain ':'."""
    return f"{app}:{process}"


def new_instance(
    session: Session, app: App, process: str, host: Host, now: datetime, *, serve: bool = False
) -> Instance:
    """An instance to run `process` of `app` on `host`, with the next cluster-wide id."""
    return Instance(
        id=next_instance_id(session),
        app=app,
        process=process,
        host=host,
        serve=serve,
        updated_at=now,
    )


def place_hosts(
    session: Session,
    app: App,
    count: int,
    *,
    staying: Sequence[str] = (),
    process: str = "web",
) -> list[Host]:
    with SCHEDULING_SECONDS.time():
        return _place_hosts(session, app, count, staying=staying, process=process)


def _place_hosts(
    session: Session, app: App, count: int, *, staying: Sequence[str], process: str
) -> list[Host]:
    hosts = session.execute(select(Host)).scalars().all()
    rows = session.execute(
        select(App.name, Instance.process, Host.name, App.memory_mb)
        .select_from(Instance)
        .join(App, Instance.app_id == App.id)
        .join(Host, Instance.host_id == Host.id)
        .where(Instance.desired == "run")
    ).all()
    current = [(placement_key(a, p), h, m) for a, p, h, m in rows]
    memory = {k: m for k, _h, m in current if m}
    key = placement_key(app.name, process)
    if app.memory_mb:
        memory[key] = app.memory_mb
    pin = app.data_host if app.keeps_data else None
    placed = place(
        pinned={key: pin} if pin is not None else None,
        apps_wanting={key: count},
        hosts=[host_slot(h) for h in hosts],
        current=[(k, h) for k, h, _m in current],
        staying={key: staying},
        constraints={key: app.constraints or {}},
        memory_mb=memory,
    )[key]
    by_name = {h.name: h for h in hosts}
    return [by_name[name] for name in placed]


def pin_data_host(session: Session, app: App) -> None:
    """An app that keeps data gets its host once, before its release phase or first
    instance runs, and keeps it (a pin to a host that was removed is chosen again)."""
    if not app.keeps_data:
        return
    if app.data_host is not None:
        exists = session.execute(select(Host.id).where(Host.name == app.data_host)).first()
        if exists is not None:
            return
        log.warning("app %s was pinned to removed host %s; choosing again", app.name, app.data_host)
        app.data_host = None
    hosts = _place_hosts(session, app, 1, staying=(), process="web")
    if hosts:
        host = hosts[0]
        app.data_host = host.name
        log.info("app %s keeps data: pinned to host %s", app.name, host.name)


def host_slot(host: Host) -> HostSlot:
    """A host row as placement sees it, with the capacity its agent last reported."""
    load = None
    if host.load_1m is not None and host.cpu_count:
        load = host.load_1m / host.cpu_count
    return HostSlot(
        name=host.name,
        role=host.role,
        state=host.state,
        labels=host.labels or {},
        free_memory_mb=host.memory_available_mb,
        load_per_cpu=load,
        memory_total_mb=host.memory_total_mb,
    )


def fail_release(session: Session, release: Release, error: str) -> None:
    """The release never becomes active; its instances leave the desired state."""
    release.status = "failed"
    release.error = error
    for instance in release.instances:
        instance.desired = "stop"
        instance.serve = False
    bump(session, desired=True)
    DEPLOYS.labels("failed").inc()
    log.info("release %s v%d failed: %s", release.app.name, release.version, error)


def activate_release(session: Session, release: Release) -> None:
    """One step: N serves, the previous active release is superseded and its instances stop.

    A previous release with an `error` crash-looped while active (controller/core/rollback.py):
    it becomes failed, so no rollback ever picks it as the last good release."""
    for other in release.app.releases:
        if other.status == "active" and other is not release:
            other.status = "failed" if other.error else "superseded"
            for instance in other.instances:
                instance.desired = "stop"
    release.status = "active"
    release.error = None
    for instance in release.instances:
        instance.serve = True
    release.activated_seq = bump(session, desired=True)
    DEPLOYS.labels("succeeded").inc()
    log.info("release %s v%d active", release.app.name, release.version)


def deadline_of(release: Release, *, timeout_s: float) -> datetime:
    """The stored deadline; rows from before deadlines were stored get the registry's default."""
    if release.deadline_at is not None:
        return release.deadline_at
    return release.created_at + timedelta(seconds=timeout_s + release.health_timeout_s)


def advance_release(session: Session, release: Release, *, now: datetime, timeout_s: float) -> None:
    """Move a deploying release on: failed instance -> failed; an instance that crashed after
    it was healthy -> failed; all running -> active, once they stayed so for the window
    (release_health.window_s) while the previous release kept serving alone."""
    if release.status != "deploying":
        return
    wanted = [i for i in release.instances if i.desired == "run"]
    failed = [i for i in wanted if i.state == "failed" and not i.crashes]
    crashed = [i for i in wanted if i.crashes]
    if failed:
        first = failed[0]
        reason = first.error or f"instance {first.id} on host {first.host.name} failed"
        fail_release(session, release, reason)
    elif crashed:
        fail_release(session, release, _crashed_before_switch(release, crashed[0]))
    elif wanted and all(i.state == "running" for i in wanted):
        if release.switch_at is None:
            window = timedelta(seconds=window_s(release))
            release.switch_at = now + window
            # The window does not eat into the install and health allowance.
            release.deadline_at = deadline_of(release, timeout_s=timeout_s) + window
            if now < release.switch_at:
                log.info(
                    "release %s v%d healthy; switching in once healthy until %s",
                    release.app.name,
                    release.version,
                    release.switch_at.isoformat(timespec="seconds"),
                )
        if now >= release.switch_at:
            activate_release(session, release)
    elif now >= (deadline := deadline_of(release, timeout_s=timeout_s)):
        stage = deploying_stage(wanted)
        seconds = (deadline - release.created_at).total_seconds()
        detail = next((i.error for i in wanted if i.error), None)
        fail_release(
            session,
            release,
            f"the deploy did not become healthy within {seconds:g} s (stuck at {stage})"
            + (f"\n{detail}" if detail else ""),
        )


def _crashed_before_switch(release: Release, instance: Instance) -> str:
    active = next((r for r in release.app.releases if r.status == "active"), None)
    keeps = f"; v{active.version} keeps serving" if active is not None else ""
    window = f" within {release.min_healthy_s:g} s" if release.min_healthy_s else ""
    return (
        f"{crash_reason(instance)}\n(it was healthy, but did not stay healthy{window}"
        f" before the switch{keeps}; see `paas logs {release.app.name}`)"
    )


def _overdue(now: datetime, timeout_s: float) -> ColumnElement[bool]:
    legacy_cutoff = now - timedelta(seconds=timeout_s + DEFAULT_HEALTH_TIMEOUT_S)
    return and_(
        Release.status == "deploying",
        or_(
            Release.deadline_at <= now,
            Release.switch_at <= now,
            and_(Release.deadline_at.is_(None), Release.created_at < legacy_cutoff),
        ),
    )


def expire_deadlines(session: Session, *, now: datetime, timeout_s: float) -> None:
    """Fail every deploying release past its deadline, and switch those whose window ended
    (checked lazily and by a tick)."""
    for release in session.execute(select(Release).where(_overdue(now, timeout_s))).scalars():
        advance_release(session, release, now=now, timeout_s=timeout_s)


def has_overdue(session: Session, *, now: datetime, timeout_s: float) -> bool:
    query = select(Release.id).where(_overdue(now, timeout_s))
    return session.execute(query.limit(1)).first() is not None


def serving_hosts(session: Session) -> list[tuple[int, Host]]:
    """(app id, host) pairs the frontends route to: up machine hosts whose live proxy config
    routes a running instance of the app.

    Agents report a departing instance as routed until a config without it is live, so a host
    stays in the set while its routes move from the old release to the new one.
    """
    rows = session.execute(
        select(Instance.app_id, Host)
        .join(Host, Instance.host_id == Host.id)
        .where(
            Instance.routed.is_(True),
            Instance.process == "web",
            Instance.state == "running",
            Host.state == "up",
            Host.role == "machine",
        )
    ).all()
    return [(app_id, host) for app_id, host in rows]


def routing_servers(session: Session) -> set[tuple[int, int]]:
    return {(app_id, host.id) for app_id, host in serving_hosts(session)}


def apply_report(
    session: Session, host: Host, report: HostReport, *, now: datetime, timeout_s: float
) -> None:
    """Record what a host observed, then advance the releases it affects."""
    before = routing_servers(session)
    host.last_heartbeat = now
    host.state = "up"
    if report.applied_index is not None:
        host.applied_index = report.applied_index
    if report.proxy_error != host.proxy_error:
        if report.proxy_error:
            log.info("host %s proxy refused its config: %s", host.name, report.proxy_error)
        host.proxy_error = report.proxy_error
    mine = {i.id: i for i in host.instances}
    touched: dict[int, Release] = {}
    for item in report.instances:
        instance = mine.get(item.id)
        if instance is None:
            continue  # not ours (or already deleted): the agent stops what it is not told to run
        changed = (instance.state, instance.port, instance.routed, instance.error) != (
            item.state,
            item.port,
            item.routed,
            item.error,
        )
        if changed:
            observe(instance, item.state, now=now)
            instance.state, instance.port = item.state, item.port
            instance.routed, instance.error = item.routed, item.error
            instance.updated_at = now
            touched[instance.release_id] = instance.release
    for instance in host.instances:
        settle(instance, now=now)
    reported = {item.id for item in report.instances}
    for instance in list(host.instances):
        if instance.desired == "stop" and (
            instance.id not in reported or instance.state == "stopped"
        ):
            session.delete(instance)
    session.flush()
    for release in touched.values():
        advance_release(session, release, now=now, timeout_s=timeout_s)
    expire_deadlines(session, now=now, timeout_s=timeout_s)
    moved = {app_id for app_id, _host in routing_servers(session) ^ before}
    seq = bump(session, desired=bool(moved))
    for app_id in moved:
        app = session.get(App, app_id)
        if app is not None:
            app.routing_seq = seq


def deploying_stage(instances: list[Instance]) -> str:
    states = {i.state for i in instances}
    if not instances or states == {"pending"}:
        return "uploaded"
    if states & {"pending", "installing"}:
        return "installing"
    if states == {"running"}:
        return "healthy"
    return "starting"


def release_stage(release: Release, *, frontends: list[Host]) -> str:
    """How far a release got, as `paas deploy` shows it."""
    if release.status == "failed":
        return "failed"
    wanted = [i for i in release.instances if i.desired == "run"]
    if awaits_release_phase(release):
        return "release phase"
    if release.status == "deploying":
        return deploying_stage(wanted)
    if release.status == "superseded":
        return "routed"
    seq = max(release.activated_seq or 0, release.app.routing_seq or 0)
    web = [i for i in wanted if i.process == "web"]  # workers are never routed
    all_routed = all(i.routed and i.state == "running" for i in web)
    applied = all((f.applied_index or 0) >= seq for f in frontends if f.state == "up")
    return "routed" if all_routed and applied else "healthy"


def scale_active(session: Session, app: App, *, now: datetime) -> None:
    """Match the active release's instances of every process type to the app's counts
    (`app.instances` for web, `app.process_counts` for workers; no new release needed)."""
    active = next((r for r in app.releases if r.status == "active"), None)
    if active is None or any(r.status == "deploying" for r in app.releases):
        return  # the next (or running) deploy places the new count
    changed = False
    for process, count in process_counts(app, active.processes).items():
        changed = _scale_process(session, app, active, process, count, now=now) or changed
    if changed:
        session.flush()
        bump(session, desired=True)


def _scale_process(
    session: Session, app: App, active: Release, process: str, count: int, *, now: datetime
) -> bool:
    running = [i for i in active.instances if i.desired == "run" and i.process == process]
    extra = len(running) - count
    if extra > 0:
        for instance in sorted(running, key=lambda i: i.id, reverse=True)[:extra]:
            instance.desired = "stop"
        log.info("app %s scaled down to %s=%d", app.name, process, count)
        return True
    if extra == 0:
        return False
    staying = [i.host.name for i in running]
    placed = place_hosts(session, app, -extra, staying=staying, process=process)
    if not placed:
        log.info("app %s wants %s=%d; no machine host is up to run more", app.name, process, count)
        return False
    for host in placed:
        active.instances.append(new_instance(session, app, process, host, now, serve=True))
    log.info("app %s scaled up to %s=%d", app.name, process, len(running) + len(placed))
    return True
