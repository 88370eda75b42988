"""Rollback, Heroku-style: a NEW release with the code and config of an earlier one.

`v5 rollback to v3` runs v3's artifact with v3's config snapshot and health settings, through
the same health-gated deploy as any release. The app's config vars are set back to that
snapshot too, so the next config change starts from what is serving, not from what was
rolled back. The agents reuse the cached artifact and venv, so it takes about a process start.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from common.manifest import Manifest
from controller.deploys import create_release
from controller.errors import Conflict, NotFound
from controller.models import App, ConfigVar, Release


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
    session: Session, app: App, *, version: int | None, now: datetime, timeout_s: float
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
        description=f"rollback to v{target.version}",
        now=now,
        timeout_s=timeout_s,
    )
