"""Rollback, Heroku-style: a NEW release with the code and config of an earlier one.

`v5 rollback to v3` runs v3's artifact with v3's config snapshot and health settings, through
the same health-gated deploy as any release. The app's config vars are set back to that
snapshot too, so the next config change starts from what is serving, not from what was
rolled back. The agents reuse the cached artifact and venv, so it takes about a process start.

Automatic rollback: an active release whose web instances all crash-loop for CRASH_LOOP_S
(controller/core/release_health.py) is rolled back the same way to the newest earlier release that
served and was superseded (never one that failed), unless paas.toml says auto_rollback =
false. The crash-looping release keeps its status until the rollback switches in; its `error`
says why, and it then becomes failed so no later rollback picks it. One attempt per release:
if the rollback fails too, the app is left as it is and `paas status` says `crashing`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import Select, exists, select
from sqlalchemy.orm import Session

from common.manifest import Manifest
from controller.core.deploys import create_release
from controller.core.release_health import CRASH_LOOP_S, auto_rollback_of, crash_loop, crash_reason
from controller.errors import Conflict, NotFound, RegistryError
from controller.store.models import App, ConfigVar, Instance, Release

log = logging.getLogger("paas.registry")


def rollback_target(app: App, version: int | None) -> Release:
    """The release to roll back to: `version`, else the newest one before the active release
    that once served (a failed release never did)."""
    active = next((r for r in app.releases if r.status == "active"), None)
    if version is not None:
        target = next((r for r in app.releases if r.version == version), None)
        if target is None:
            raise NotFound(f"app {app.name} has no release {version}")
        if target is active:
            raise Conflict(f"release v{version} of {app.name} is already the active release")
        if target.status == "deploying":
            raise Conflict(f"release v{version} of {app.name} is still deploying")
        return target
    if active is None:
        raise Conflict(
            f"app {app.name} has no active release to roll back from; name a version to deploy"
        )
    earlier = [r for r in app.releases if r.version < active.version and r.status == "superseded"]
    if not earlier:
        raise Conflict(f"no release of {app.name} before v{active.version} ever served")
    return max(earlier, key=lambda r: r.version)


def restore_config(app: App, release: Release) -> None:
    """Set the app's config vars (and which are secret) to `release`'s snapshot."""
    secret = set(release.secret_keys or [])
    current = {v.key: v for v in app.config_vars}
    for key in set(current) - set(release.config):
        app.config_vars.remove(current.pop(key))
    for key, value in release.config.items():
        var = current.get(key)
        if var is None:
            app.config_vars.append(ConfigVar(key=key, value=value, secret=key in secret))
        else:
            var.value, var.secret = value, key in secret


def rollback(
    session: Session,
    app: App,
    *,
    version: int | None,
    now: datetime,
    timeout_s: float,
    why: str | None = None,
) -> Release:
    """Start deploying a new release made from the target's code and config."""
    target = rollback_target(app, version)
    restore_config(app, target)
    session.flush()
    session.refresh(app, ["config_vars"])
    return create_release(
        session,
        app,
        artifact_sha256=target.artifact_sha256,
        processes=dict(target.processes),
        manifest=Manifest(health_path=target.health_path, health_timeout=target.health_timeout_s),
        description=f"{'auto-' if why else ''}rollback to v{target.version}"
        + (f": {why}" if why else ""),
        now=now,
        timeout_s=timeout_s,
    )


def _looping_query(now: datetime) -> Select[Release]:
    """Active releases, not yet rolled back, with a web instance crash-looping long enough."""
    cutoff = now - timedelta(seconds=CRASH_LOOP_S)
    looping = exists().where(
        Instance.release_id == Release.id,
        Instance.desired == "run",
        Instance.process == "web",
        Instance.crashing_since <= cutoff,
    )
    return select(Release).where(Release.status == "active", Release.error.is_(None), looping)


def has_crash_loops(session: Session, *, now: datetime) -> bool:
    return session.execute(_looping_query(now).limit(1)).first() is not None


def roll_back_crash_loops(session: Session, *, now: datetime, timeout_s: float) -> None:
    """Roll back every active release whose web instances all crash-loop (one attempt each)."""
    for release in list(session.execute(_looping_query(now)).scalars()):
        blamed = crash_loop(release, now=now)
        if blamed is None:
            continue
        app = release.app
        reason = crash_reason(blamed)
        headline = reason.splitlines()[0]
        if not auto_rollback_of(app):
            continue  # paas.toml auto_rollback = false: `paas status` says crashing
        if any(r.status == "deploying" for r in app.releases):
            continue  # a deploy (or rollback) in progress decides what serves next
        try:
            started = rollback(
                session,
                app,
                version=None,
                now=now,
                timeout_s=timeout_s,
                why=f"v{release.version} crash-looped ({headline})",
            )
        except RegistryError as exc:
            release.error = f"crash loop after it went live: {reason}\nnot rolled back: {exc}"
            log.warning("app %s v%d crash-loops; no rollback: %s", app.name, release.version, exc)
            continue
        release.error = (
            f"crash loop after it went live: {reason}\n"
            f"rolled back automatically by v{started.version} ({started.description})"
        )
        log.warning(
            "app %s v%d crash-loops (%s): rolling back as v%d",
            app.name,
            release.version,
            headline,
            started.version,
        )
