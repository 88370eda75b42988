"""Dependencies between apps (`depends_on`) and their service endpoints.

Each app gets a fixed service port from the registry; every machine proxy listens on
127.0.0.1:<service port> for it and forwards to the machine proxies that route a healthy
instance of it. An app that lists `depends_on = ["users"]` gets `USERS_URL` pointing at that
local endpoint, so moving `users` between hosts changes only proxy configs, never the
environment of its dependents.

The graph checks are pure functions over plain mappings; the rest runs inside one write
(or read) transaction of the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from common import wire
from controller.core.deploys import serving_hosts
from controller.errors import Conflict, Invalid
from controller.settings import RegistrySettings
from controller.store.models import App, Release

SERVICE_HOST = "127.0.0.1"


class DependencyError(ValueError):
    """A dependency list names a missing app or closes a cycle; the message says which."""


def env_key(app: str) -> str:
    """`users` -> `USERS_URL`, `user-db` -> `USER_DB_URL`."""
    return app.upper().replace("-", "_") + "_URL"


def service_url(port: int) -> str:
    return f"http://{SERVICE_HOST}:{port}"


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a], or None. Deterministic: nodes visited in sorted order."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            nxt = todo.pop(0)
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt in done:
                continue
            stack.append((nxt, sorted(graph.get(nxt, ()))))
            path.append(nxt)
            on_path.add(nxt)
    return None


def check_dependencies(
    graph: Mapping[str, Sequence[str]], app: str, depends_on: Sequence[str]
) -> None:
    """Would `app` depending on `depends_on` keep the graph valid? `graph` holds every app."""
    if app in depends_on:
        raise DependencyError(f"app {app} cannot depend on itself")
    missing = [name for name in depends_on if name not in graph]
    if missing:
        raise DependencyError(
            f"app {app} depends on {', '.join(missing)}, which "
            + ("does" if len(missing) == 1 else "do")
            + " not exist; create and deploy it first"
        )
    cycle = find_cycle({**graph, app: list(depends_on)})
    if cycle is not None:
        if app in cycle[:-1]:  # name it from the app being changed: "web -> users -> web"
            at = cycle.index(app)
            cycle = [*cycle[at:-1], *cycle[:at], app]
        raise DependencyError("dependency cycle: " + " -> ".join(cycle))


def dependency_graph(session: Session) -> dict[str, list[str]]:
    return {
        name: list(deps or []) for name, deps in session.execute(select(App.name, App.depends_on))
    }


def set_dependencies(
    session: Session, app: App, depends_on: Sequence[str], settings: RegistrySettings
) -> None:
    """Record `app`'s dependencies after checking them; Invalid when they are refused.
    A dependency created before service ports existed gets its port now."""
    try:
        check_dependencies(dependency_graph(session), app.name, depends_on)
    except DependencyError as exc:
        raise Invalid(str(exc)) from exc
    app.depends_on = list(depends_on)
    for name in depends_on:
        other = session.execute(select(App).where(App.name == name)).scalar_one()
        assign_service_port(session, other, settings)


def dependents(session: Session, app: str) -> list[str]:
    return sorted(name for name, deps in dependency_graph(session).items() if app in deps)


def refuse_delete_if_needed(session: Session, app: str, *, force: bool) -> None:
    users = dependents(session, app)
    if users and not force:
        raise Conflict(
            f"app {app} is a dependency of {', '.join(users)}; remove it from their depends_on"
            " first, or delete with --force"
        )


def assign_service_port(session: Session, app: App, settings: RegistrySettings) -> int:
    """The app's fixed service port: the lowest free one of the configured range."""
    if app.service_port is not None:
        return app.service_port
    used = {p for (p,) in session.execute(select(App.service_port)) if p is not None}
    for port in range(settings.service_port_min, settings.service_port_max + 1):
        if port not in used:
            app.service_port = port
            session.flush()
            return port
    raise Conflict(
        f"no free service port left in {settings.service_port_min}-{settings.service_port_max}"
    )


def dependency_env(app: App, ports: Mapping[str, int | None]) -> dict[str, str]:
    """`<NAME>_URL` for each dependency that has a service port."""
    env: dict[str, str] = {}
    for name in app.depends_on or []:
        port = ports.get(name)
        if port is not None:
            env[env_key(name)] = service_url(port)
    return env


def service_ports(session: Session) -> dict[str, int | None]:
    return {name: port for name, port in session.execute(select(App.name, App.service_port))}


def service_routes(session: Session, settings: RegistrySettings) -> list[wire.ServiceRoute]:
    """Every app with a service port and an active release, with the hosts that serve it."""
    servers: dict[int, dict[str, wire.RouteServer]] = {}
    for app_id, host in serving_hosts(session):
        servers.setdefault(app_id, {})[host.name] = wire.RouteServer(
            host=host.name, address=host.address, port=host.proxy_port
        )
    apps = session.execute(
        select(App)
        .join(Release)
        .where(Release.status == "active", App.service_port.is_not(None))
        .order_by(App.name)
    ).scalars()
    routes = []
    for app in apps.unique():
        assert app.service_port is not None
        by_host = servers.get(app.id, {})
        routes.append(
            wire.ServiceRoute(
                name=app.name,
                port=app.service_port,
                domain=f"{app.name}.{settings.domain}",
                servers=[by_host[h] for h in sorted(by_host)],
            )
        )
    return routes
