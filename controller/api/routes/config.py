"""Config vars of an app; every change becomes a new release (code + config roll back together)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from common import wire
from common.manifest import Manifest
from common.names import AppName
from controller.api.auth import require_app_scope
from controller.api.context import get_ctx
from controller.api.queries import get_app
from controller.api.views import REDACTED
from controller.context import Context
from controller.core.clock import now
from controller.core.deploys import create_release
from controller.errors import Invalid
from controller.store.db import bump
from controller.store.models import App, ConfigVar

router = APIRouter(prefix="/v1/apps", tags=["config"], dependencies=[Depends(require_app_scope)])


SECRET_SUFFIXES = ("_SECRET", "_PASSWORD", "_TOKEN", "_KEY")


def is_secret_key(key: str) -> bool:
    """Keys named like credentials are secret without `--secret`."""
    return key.endswith(SECRET_SUFFIXES) or key in {s.lstrip("_") for s in SECRET_SUFFIXES}


def _view(app: App, release: int | None = None, *, reveal: bool = False) -> wire.ConfigVars:
    return wire.ConfigVars(
        vars={v.key: REDACTED if v.secret and not reveal else v.value for v in app.config_vars},
        secret=[v.key for v in app.config_vars if v.secret],
        release=release,
    )


def _describe(body: wire.ConfigUpdate) -> str:
    """`config: set A, B; unset C` (keys only: values may be secret)."""
    parts = []
    if body.set:
        parts.append("set " + ", ".join(sorted(body.set)))
    if body.unset:
        parts.append("unset " + ", ".join(sorted(body.unset)))
    if body.secret:
        parts.append("secret " + ", ".join(sorted(body.secret)))
    return "config: " + ("; ".join(parts) or "unchanged")


@router.get("/{app}/config", response_model=wire.ConfigVars)
def read_config(
    app: AppName, reveal: bool = Query(False), ctx: Context = Depends(get_ctx)
) -> wire.ConfigVars:
    """Secret values are redacted unless the admin asks `?reveal=true`."""
    with ctx.db.read() as session:
        return _view(get_app(session, app), reveal=reveal)


@router.patch("/{app}/config", response_model=wire.ConfigVars)
def update_config(
    app: AppName, body: wire.ConfigUpdate, ctx: Context = Depends(get_ctx)
) -> wire.ConfigVars:
    both = set(body.set) & set(body.unset)
    if both:
        raise Invalid(f"config keys both set and unset: {', '.join(sorted(both))}")
    with ctx.db.write() as session:
        row = get_app(session, app)
        current = {v.key: v for v in row.config_vars}
        for key in body.unset:
            if key in current:
                row.config_vars.remove(current.pop(key))
        for key, value in body.set.items():
            if key in current:
                current[key].value = value
            else:
                current[key] = ConfigVar(key=key, value=value)
                row.config_vars.append(current[key])
        for key in body.secret:
            if key in current:
                current[key].secret = True
        for key, var in current.items():
            if is_secret_key(key):
                var.secret = True
        session.flush()
        session.refresh(row, ["config_vars"])
        bump(session, desired=False)
        active = next((r for r in row.releases if r.status == "active"), None)
        started = None
        if active is not None:
            release = create_release(
                session,
                row,
                artifact_sha256=active.artifact_sha256,
                processes=dict(active.processes),
                manifest=Manifest(
                    health_path=active.health_path, health_timeout=active.health_timeout_s
                ),
                description=_describe(body),
                now=now(),
                timeout_s=ctx.settings.deploy_timeout_s,
            )
            started = release.version
        return _view(row, started)
