"""Apps, their releases and instances (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Path, Query, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from common import wire
from common.manifest import ManifestError, parse_manifest, parse_procfile, require_web
from common.names import AppName
from controller.api.auth import Principal, require_app_scope
from controller.api.context import get_ctx
from controller.api.queries import expire_if_due, get_app, watch
from controller.api.release_phase import run_release_phase
from controller.api.routes.data import delete_everywhere
from controller.api.views import app_view, instance_view, release_view, up_frontends
from controller.context import Context
from controller.core.clock import now
from controller.core.deploys import add_domains, awaits_release_phase, create_release, scale_active
from controller.core.domains import check_claimable
from controller.core.release_env import app_identity
from controller.core.rollback import rollback
from controller.core.services import assign_service_port, refuse_delete_if_needed, set_dependencies
from controller.errors import Conflict, Invalid, NotFound
from controller.store.db import bump
from controller.store.models import App, Instance, Release

router = APIRouter(prefix="/v1/apps", tags=["apps"], dependencies=[Depends(require_app_scope)])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=wire.App)
def create_app_route(
    body: wire.AppCreate,
    who: Principal = Depends(require_app_scope),
    ctx: Context = Depends(get_ctx),
) -> wire.App:
    check_claimable(body.domains, cluster_domain=ctx.settings.domain, allowed=who.allowed_domains)
    with ctx.db.write() as session:
        if session.execute(select(App).where(App.name == body.name)).first() is not None:
            raise Conflict(f"app {body.name} already exists")
        app = App(name=body.name, instances=body.instances, health_path=body.health_path)
        session.add(app)
        session.flush()
        add_domains(session, app, body.domains)
        assign_service_port(session, app, ctx.settings)
        bump(session, desired=True)
        view = app_view(app, ctx.settings)
    return view


@router.get("", response_model=list[wire.App])
def list_apps(ctx: Context = Depends(get_ctx)) -> list[wire.App]:
    with ctx.db.read() as session:
        apps = session.execute(select(App).order_by(App.name)).scalars()
        return [app_view(app, ctx.settings) for app in apps]


@router.get("/{app}", response_model=wire.App)
def read_app(app: AppName, ctx: Context = Depends(get_ctx)) -> wire.App:
    with ctx.db.read() as session:
        return app_view(get_app(session, app), ctx.settings)


@router.patch("/{app}", response_model=wire.App)
def update_app(
    app: AppName,
    body: wire.AppUpdate,
    who: Principal = Depends(require_app_scope),
    ctx: Context = Depends(get_ctx),
) -> wire.App:
    with ctx.db.write() as session:
        row = get_app(session, app)
        check_claimable(
            body.domains or [],
            cluster_domain=ctx.settings.domain,
            allowed=who.allowed_domains,
            owned={d.domain for d in row.domains},
        )
        if body.domains is not None:
            wanted = set(body.domains)
            for domain in list(row.domains):
                if domain.domain not in wanted:
                    row.domains.remove(domain)
            session.flush()
            add_domains(session, row, body.domains)
        if body.health_path is not None:
            row.health_path = body.health_path
        scaled = _scale_counts(row, body)
        if scaled:
            scale_active(session, row, now=now())
        bump(session, desired=True)
        return app_view(row, ctx.settings)


def _scale_counts(row: App, body: wire.AppUpdate) -> bool:
    """Apply `instances` / `process_counts` to the app row; True when a count changed."""
    wanted = dict(body.process_counts or {})
    if body.instances is not None:
        wanted.setdefault("web", body.instances)
    if "release" in wanted:
        raise Invalid("the release phase runs once per deploy; it cannot be scaled")
    active = next((r for r in row.releases if r.status == "active"), None)
    unknown = sorted(k for k in wanted if active is not None and k not in active.processes)
    if unknown:
        raise Invalid(f"the active release's Procfile has no process type {', '.join(unknown)}")
    changed = False
    if "web" in wanted and wanted["web"] != row.instances:
        row.instances = wanted["web"]
        changed = True
    workers = {k: v for k, v in wanted.items() if k != "web"}
    merged = {**(row.process_counts or {}), **workers}
    if merged != (row.process_counts or {}):
        row.process_counts = merged  # a new dict: the JSON column sees the change
        changed = True
    return changed


@router.delete("/{app}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_app(
    app: AppName,
    force: bool = Query(False),
    delete_data: bool = Query(False),
    ctx: Context = Depends(get_ctx),
) -> Response:
    """Refused (409) while other apps depend on it, unless `force=true`. Its data folders
    on the hosts stay (out of reach of any new app of the same name) unless `delete_data`:
    then every machine host is asked to remove them, and the answer says which did."""

    def delete() -> str:
        with ctx.db.write() as session:
            row = get_app(session, app)
            refuse_delete_if_needed(session, app, force=force)
            identity = app_identity(row)
            session.delete(row)
            bump(session, desired=True)
        return identity

    identity = await run_in_threadpool(delete)
    if not delete_data:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    hosts = await delete_everywhere(ctx, app, identity)
    return JSONResponse({"data": hosts})


@router.post("/{app}/releases", status_code=status.HTTP_201_CREATED, response_model=wire.Release)
def create_release_route(
    app: AppName,
    body: wire.ReleaseCreate,
    background: BackgroundTasks,
    who: Principal = Depends(require_app_scope),
    ctx: Context = Depends(get_ctx),
) -> wire.Release:
    with ctx.db.read() as session:
        owned = {d.domain for d in get_app(session, app).domains}
    if not ctx.artifacts.exists(body.artifact_sha256):
        raise NotFound(f"artifact {body.artifact_sha256} is not stored; upload it first")
    procfile, manifest_text = ctx.artifacts.read_app_files(body.artifact_sha256)
    try:
        processes = require_web(parse_procfile(procfile))
        manifest = parse_manifest(manifest_text or "")
    except ManifestError as exc:
        raise Invalid(str(exc)) from exc
    # paas.toml domains obey the same rules as `domains:add` (controller/core/domains.py).
    check_claimable(
        manifest.domains,
        cluster_domain=ctx.settings.domain,
        allowed=who.allowed_domains,
        owned=owned,
    )
    with ctx.db.write() as session:
        row = get_app(session, app)
        assign_service_port(session, row, ctx.settings)
        if manifest.depends_on is not None:
            set_dependencies(session, row, manifest.depends_on, ctx.settings)
        release = create_release(
            session,
            row,
            artifact_sha256=body.artifact_sha256,
            processes=processes,
            manifest=manifest,
            description=f"deploy {body.artifact_sha256[:12]}",
            now=now(),
            timeout_s=ctx.settings.deploy_timeout_s,
            release_phase=True,
        )
        if awaits_release_phase(
            release
        ):  # runs after this answer (controller/core/release_phase.py)
            background.add_task(run_release_phase, ctx, app, release.version)
        return release_view(release, frontends=up_frontends(session))


@router.post("/{app}/rollback", status_code=status.HTTP_201_CREATED, response_model=wire.Release)
def rollback_route(
    app: AppName,
    body: Annotated[wire.RollbackRequest | None, Body()] = None,
    ctx: Context = Depends(get_ctx),
) -> wire.Release:
    """A new release with the code and config of `version` (default: the one before)."""
    with ctx.db.write() as session:
        release = rollback(
            session,
            get_app(session, app),
            version=body.version if body else None,
            now=now(),
            timeout_s=ctx.settings.deploy_timeout_s,
        )
        return release_view(release, frontends=up_frontends(session))


@router.get("/{app}/releases", response_model=list[wire.Release])
def list_releases(app: AppName, ctx: Context = Depends(get_ctx)) -> list[wire.Release]:
    expire_if_due(ctx)
    with ctx.db.read() as session:
        row = get_app(session, app)
        frontends = up_frontends(session)
        releases = sorted(row.releases, key=lambda r: r.version, reverse=True)
        return [release_view(r, frontends=frontends) for r in releases]


@router.get("/{app}/releases/{version}", response_model=wire.Release)
async def read_release(
    app: AppName,
    version: Annotated[int, Path(ge=1)],
    response: Response,
    index: int = Query(0, ge=0),
    wait: str | None = Query(None, description="30s, 500ms; at most 300s"),
    ctx: Context = Depends(get_ctx),
) -> wire.Release:
    await run_in_threadpool(_find_release, ctx, app, version)

    def build(session: Session, _index: int) -> wire.Release:
        release = session.execute(
            select(Release).join(App).where(App.name == app, Release.version == version)
        ).scalar_one_or_none()
        if release is None:
            raise NotFound(f"app {app} has no release {version}")
        return release_view(release, frontends=up_frontends(session))

    return await watch(ctx, response, index=index, wait=wait, which="seq", build=build)


def _find_release(ctx: Context, app: str, version: int) -> None:
    with ctx.db.read() as session:
        row = get_app(session, app)
        if not any(r.version == version for r in row.releases):
            raise NotFound(f"app {app} has no release {version}")


@router.get("/{app}/instances", response_model=list[wire.InstanceView])
def list_instances(app: AppName, ctx: Context = Depends(get_ctx)) -> list[wire.InstanceView]:
    with ctx.db.read() as session:
        row = get_app(session, app)
        query = select(Instance).where(Instance.app_id == row.id).order_by(Instance.id)
        return [instance_view(i) for i in session.execute(query).scalars()]
