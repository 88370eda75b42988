"""Host loss: a host silent past the heartbeat TTL is down, and its instances move elsewhere.

Every function runs inside one write transaction and takes `now`, so tests own the clock.
A lost host's instances stay in the table with desired "stop": when the host comes back, its
desired state no longer lists them, so its agent stops them, and its reports delete them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.core.deploys import (
    new_instance,
    place_hosts,
    process_counts,
    routing_servers,
    scale_active,
)
from controller.store.db import bump
from controller.store.models import App, Host, Release

log = logging.getLogger("paas.registry")


def lost_hosts(session: Session, *, now: datetime, ttl_s: float) -> list[Host]:
    """Up hosts whose last heartbeat is older than the TTL."""
    cutoff = now - timedelta(seconds=ttl_s)
    query = select(Host).where(Host.state == "up", Host.last_heartbeat < cutoff)
    return list(session.execute(query).scalars())


def mark_lost(session: Session, *, now: datetime, ttl_s: float) -> list[str]:
    """Mark silent hosts down and re-place their instances; the names of the hosts marked."""
    lost = lost_hosts(session, now=now, ttl_s=ttl_s)
    if not lost:
        return []
    before = routing_servers(session)
    releases: dict[int, Release] = {}
    for host in lost:
        host.state = "down"
        seconds = (now - host.last_heartbeat).total_seconds() if host.last_heartbeat else 0.0
        log.info("host %s missed its heartbeats for %.1f s: marked down", host.name, seconds)
        for instance in host.instances:
            if instance.desired != "run":
                continue
            instance.desired = "stop"
            instance.routed = False
            # Lost: not counted and replaced elsewhere; stopped for real when (if) the host
            # returns, and until then `paas ps` shows it as lost, never as running.
            instance.state = "lost"
            instance.updated_at = now
            releases[instance.release_id] = instance.release
    session.flush()
    for release in releases.values():
        _replace(session, release, now=now)
    moved = {app_id for app_id, _host in routing_servers(session) ^ before}
    seq = bump(session, desired=True)
    for app_id in moved:
        app = session.get(App, app_id)
        if app is not None:
            app.routing_seq = seq
    return [h.name for h in lost]


def _replace(session: Session, release: Release, *, now: datetime) -> None:
    """Give `release` back the instances it lost, on up hosts (none: it runs fewer for now)."""
    app = release.app
    if release.status == "active":
        scale_active(session, app, now=now)
        return
    if release.status != "deploying":
        return
    for process, count in process_counts(app, release.processes).items():
        wanted = [i for i in release.instances if i.desired == "run" and i.process == process]
        staying = [i.host.name for i in wanted]
        missing = max(0, count - len(staying))
        for host in place_hosts(session, app, missing, staying=staying, process=process):
            release.instances.append(new_instance(session, app, process, host, now))
            log.info(
                "release %s v%d: %s instance re-placed on %s",
                app.name,
                release.version,
                process,
                host.name,
            )
    session.flush()


def refill(session: Session, *, now: datetime) -> None:
    """A host came (back) up: every active app short of its count gets the missing instances."""
    apps = session.execute(select(App).join(Release).where(Release.status == "active")).scalars()
    for app in apps.unique():
        active = next(r for r in app.releases if r.status == "active")
        for process, count in process_counts(app, active.processes).items():
            running = [i for i in active.instances if i.desired == "run" and i.process == process]
            if len(running) < count:
                scale_active(session, app, now=now)  # every type short of its count
                break
