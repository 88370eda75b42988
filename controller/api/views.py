"""ORM rows -> the wire models of `common.wire` (the only shapes the API returns)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common import wire
from common.manifest import DEFAULT_HEALTH_CHECK_TIMEOUT_S, DEFAULT_HEALTH_THRESHOLD
from controller.acme.challenges import route_challenges
from controller.core.certs import route_certs
from controller.core.deploys import release_stage, serving_hosts
from controller.core.release_env import release_env
from controller.core.release_health import crashing_summary
from controller.core.route_options import options_for
from controller.core.services import service_ports, service_routes
from controller.settings import RegistrySettings
from controller.store.models import App, Host, Instance, Release

REDACTED = "********"


def app_view(app: App, settings: RegistrySettings) -> wire.App:
    domains = [d.domain for d in app.domains]
    active = next((r.version for r in app.releases if r.status == "active"), None)
    return wire.App(
        name=app.name,
        domains=domains,
        instances=app.instances,
        health_path=app.health_path,
        urls=[settings.app_url(app.name)] + [settings.url_for(d) for d in domains],
        active_release=active,
        created_at=app.created_at,
        service_port=app.service_port,
        depends_on=list(app.depends_on or []),
        process_counts=dict(app.process_counts or {}),
        data_host=app.data_host if app.keeps_data else None,
    )


def instance_view(instance: Instance) -> wire.InstanceView:
    return wire.InstanceView(
        id=instance.id,
        app=instance.app.name,
        release=instance.release.version,
        process=instance.process,
        host=instance.host.name,
        port=instance.port,
        state=instance.state,  # type: ignore[arg-type]
        routed=instance.routed,
        error=instance.error,
        updated_at=instance.updated_at,
        crashes=instance.crashes or 0,
    )


def up_frontends(session: Session) -> list[Host]:
    query = select(Host).where(Host.role == "frontend", Host.state == "up")
    return list(session.execute(query).scalars())


def release_view(release: Release, *, frontends: list[Host]) -> wire.Release:
    secret = set(release.secret_keys or [])
    return wire.Release(
        app=release.app.name,
        version=release.version,
        artifact_sha256=release.artifact_sha256,
        processes=release.processes,
        health_path=release.health_path,
        config={k: REDACTED if k in secret else v for k, v in release.config.items()},
        status=release.status,  # type: ignore[arg-type]
        stage=release_stage(release, frontends=frontends),  # type: ignore[arg-type]
        error=release.error,
        created_at=release.created_at,
        instances=[instance_view(i) for i in release.instances],
        health_timeout_s=release.health_timeout_s,
        description=release.description or "",
        min_healthy_s=release.min_healthy_s or 0.0,
        crashing=crashing_summary(release) if release.status == "active" else None,
        release_output=release.release_output,
    )


def host_view(session: Session, host: Host) -> wire.Host:
    count = session.execute(
        select(func.count(Instance.id)).where(
            Instance.host_id == host.id, Instance.desired == "run"
        )
    ).scalar_one()
    return wire.Host(
        name=host.name,
        role=host.role,  # type: ignore[arg-type]
        address=host.address,
        proxy_port=host.proxy_port,
        labels=host.labels or {},
        state=host.state,  # type: ignore[arg-type]
        last_heartbeat=host.last_heartbeat,
        instances=count,
        proxy_error=host.proxy_error,
        capacity=_capacity(host),
    )


def _capacity(host: Host) -> wire.HostCapacity | None:
    if host.cpu_count is None or host.memory_total_mb is None:
        return None
    return wire.HostCapacity(
        cpu_count=host.cpu_count,
        memory_total_mb=host.memory_total_mb,
        memory_available_mb=host.memory_available_mb or 0,
        load_1m=host.load_1m or 0.0,
        state_disk_mb=host.state_disk_mb,
        disk_free_mb=host.disk_free_mb,
        disk_total_mb=host.disk_total_mb,
    )


def app_domains(app: App, settings: RegistrySettings) -> list[str]:
    return [f"{app.name}.{settings.domain}"] + [d.domain for d in app.domains]


def desired_state(
    session: Session, host: Host, *, index: int, settings: RegistrySettings
) -> wire.DesiredState:
    rows = session.execute(
        select(Instance)
        .where(Instance.host_id == host.id, Instance.desired == "run")
        .order_by(Instance.id)
    ).scalars()
    instances = []
    ports = service_ports(session)
    for instance in rows:
        release, app = instance.release, instance.app
        env = release_env(release, host, ports, settings)
        instances.append(
            wire.DesiredInstance(
                id=instance.id,
                app=app.name,
                release=release.version,
                process=instance.process,
                command=release.processes[instance.process],
                artifact_sha256=release.artifact_sha256,
                env=env,
                health_path=release.health_path,
                health_timeout_s=release.health_timeout_s,
                domains=app_domains(app, settings),
                serve=instance.serve,
                routing=options_for(session, app),
                memory_mb=app.memory_mb or None,
                health_check_timeout_s=app.health_check_timeout_s or DEFAULT_HEALTH_CHECK_TIMEOUT_S,
                health_threshold=app.health_threshold or DEFAULT_HEALTH_THRESHOLD,
            )
        )
    frontends, machines = proxy_clients(session) if host.role == "machine" else ([], [])
    return wire.DesiredState(
        index=index,
        host=host.name,
        instances=instances,
        services=service_routes(session, settings) if host.role == "machine" else [],
        frontends=frontends,
        machines=machines,
    )


def proxy_clients(session: Session) -> tuple[list[str], list[str]]:
    """(frontend, machine) addresses a machine proxy serves (its only clients): every joined host of
    each role, whatever its state, so one that comes back is served at once."""
    hosts = session.execute(select(Host.role, Host.address)).all()
    return (
        sorted({address for role, address in hosts if role == "frontend"}),
        sorted({address for role, address in hosts if role == "machine"}),
    )


def routing_table(session: Session, *, index: int, settings: RegistrySettings) -> wire.RoutingTable:
    """Every app with an active release; servers = up machine hosts with a routed instance."""
    apps = session.execute(
        select(App).join(Release).where(Release.status == "active").order_by(App.name)
    ).scalars()
    servers: dict[int, dict[str, wire.RouteServer]] = {}
    for app_id, host in routed_hosts(session):
        servers.setdefault(app_id, {})[host.name] = wire.RouteServer(
            host=host.name, address=host.address, port=host.proxy_port
        )
    return wire.RoutingTable(
        index=index,
        apps=[
            wire.RouteApp(
                name=app.name,
                domains=app_domains(app, settings),
                servers=[servers.get(app.id, {})[h] for h in sorted(servers.get(app.id, {}))],
                routing=options_for(session, app),
                health_path=_active_health_path(app),
            )
            for app in apps.unique()
        ],
        certs=route_certs(session, settings),
        challenges=route_challenges(session),
    )


def routed_hosts(session: Session) -> list[tuple[int, Host]]:
    """(app id, host) pairs the frontends route to: the serving hosts (controller/core/deploys.py),
    less those whose instances of the app are all leaving (scaled down, superseded) while the
    app keeps another serving host. Frontends drop such a host at the same index its agent is
    told to stop the instance, and the agent keeps routing it for a grace period
    (agent/machine/proxy.py), so no request reaches a host that no longer serves the app."""
    leaving = {
        (app_id, host_id)
        for app_id, host_id, desired in session.execute(
            select(Instance.app_id, Instance.host_id, Instance.desired).where(
                Instance.routed.is_(True)
            )
        ).all()
        if desired == "stop"
    }
    staying = {
        (app_id, host_id)
        for app_id, host_id in session.execute(
            select(Instance.app_id, Instance.host_id).where(
                Instance.routed.is_(True), Instance.desired == "run"
            )
        ).all()
    }
    rows = serving_hosts(session)
    kept: dict[int, list[Host]] = {}
    for app_id, host in rows:
        key = (app_id, host.id)
        if key not in leaving or key in staying:
            kept.setdefault(app_id, []).append(host)
    result = []
    for app_id, host in rows:
        if not kept.get(app_id):
            result.append((app_id, host))  # nothing else serves it: keep routing the leavers
        elif host in kept[app_id]:
            result.append((app_id, host))
    return result


def _active_health_path(app: App) -> str:
    active = next((r for r in app.releases if r.status == "active"), None)
    return active.health_path if active is not None else app.health_path
