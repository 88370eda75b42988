"""The machine proxy's view model: (desired instances, observed healthy ports) -> nginx.conf text.

Pure: no I/O besides loading the template, no clock, no environment reads. Every decision
(which ports an app's upstream holds, which apps answer 503, the listen string) is made here
in typed values; the template only formats them. Every value is re-validated with
common.names before rendering (defence in depth: the registry checked them already).

Who may connect: the public listener serves only the frontends, whose
X-Forwarded-* headers are passed on as they sent them, and the machine proxies of the
cluster, whose service listeners forward to apps other apps depend on (headers set from the
connection, since an app on that machine could connect too). Everyone else gets 403 before
any app is asked. With no frontend known yet, loopback stands in for it (a single host).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import jinja2

from agent.errors import RenderError
from agent.proxy.options import checked_options
from agent.proxy.render import render
from common.names import InvalidName, check_address, check_app_name, check_domain
from common.wire import DesiredInstance, RouteOptions, ServiceRoute

TEMPLATE = "nginx.conf.j2"
MAIN_FILE = "nginx.conf"

_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]{0,1000}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class NginxPaths:
    """Absolute paths nginx writes to, all under the agent's state_dir."""

    pid: str
    error_log: str
    access_log: str
    temp: str  # client_body / proxy / fastcgi / uwsgi / scgi temp folders live in here


# The path HAProxy checks each machine with (Host: the app's domain). nginx
# answers it itself - 200 when it routes a healthy instance of the app, 503 when not - so a
# check proves the host and its nginx are alive without queueing behind the app's requests
# (a busy single-worker app is not a dead host; the agent's own checks judge the app).
PROXY_CHECK_PATH = "/.paas/proxy-check"

ClientRole = Literal["frontend", "machine"]
_LOOPBACK = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class ProxyClient:
    """A source network allowed on the public listener (nginx `geo` syntax) and its role:
    `frontend` headers are trusted; `machine` may reach service apps, headers not trusted."""

    network: str  # "198.18.0.2/32", "::1/128"
    role: ClientRole


@dataclass(frozen=True)
class AppServer:
    name: str
    upstream: str  # the upstream block's name
    domains: tuple[str, ...]
    ports: tuple[int, ...]  # empty: the app answers 503 here
    instance_ids: tuple[int, ...]  # the instances behind `ports` (same order)
    max_body_mb: int = 100  # client_max_body_size
    read_timeout_s: int = 60  # proxy_read_timeout / proxy_send_timeout
    websocket: bool = True  # pass Upgrade through
    service: bool = False  # other apps depend on it: the cluster's machine proxies may connect
    allowed: tuple[str, ...] = ()  # networks its location lets through (`allow`, then deny all)


@dataclass(frozen=True)
class ServiceServer:
    """A service endpoint: 127.0.0.1:`port` forwards to the proxies (`servers`, "addr:port")
    that route a healthy instance of app `name`, with Host `domain`; no servers: it answers
    503."""

    name: str
    upstream: str
    port: int
    domain: str
    servers: tuple[str, ...]


@dataclass(frozen=True)
class NginxView:
    listen: str  # "<address>:<port>", IPv6 in brackets
    worker_user: str | None  # set only when the master runs as root
    paths: NginxPaths
    server_names_hash_bucket_size: int
    apps: tuple[AppServer, ...]
    services: tuple[ServiceServer, ...] = ()
    clients: tuple[ProxyClient, ...] = ()  # empty: nobody may connect to the public listener
    proxy_check_path: str = PROXY_CHECK_PATH  # answered by nginx itself, see above

    @property
    def routed_ids(self) -> frozenset[int]:
        """The instances this config sends traffic to."""
        return frozenset(i for app in self.apps for i in app.instance_ids)

    def as_mapping(self) -> dict[str, object]:
        return asdict(self)


def build_view(
    desired: Iterable[DesiredInstance],
    healthy_ports: Mapping[int, int],
    *,
    address: str,
    port: int,
    paths: NginxPaths,
    worker_user: str | None = None,
    services: Iterable[ServiceRoute] = (),
    frontends: Sequence[str] = (),
    machines: Sequence[str] = (),
) -> NginxView:
    """One server per app (its domains), upstream = ports of its healthy `serve` instances.

    `healthy_ports` maps instance id -> port for instances observed running (health passed).
    `frontends` and `machines` are the IP addresses of the cluster's frontend and machine
    hosts (the only clients the public listener serves). Raises RenderError for any value
    that does not match its strict pattern.
    """
    try:
        check_address(address)
        listen_host = f"[{address}]" if _is_ipv6(address) else address
        _check_port(port)
        for value in (paths.pid, paths.error_log, paths.access_log, paths.temp):
            if not _PATH_RE.fullmatch(value) or "/../" in value or value.endswith("/.."):
                raise InvalidName(f"invalid nginx path {value!r}")
        if worker_user is not None and not _USER_RE.fullmatch(worker_user):
            raise InvalidName(f"invalid worker user {worker_user!r}")

        domains: dict[str, list[str]] = {}
        members: dict[str, list[tuple[int, int]]] = {}
        claimed: set[str] = set()
        options: dict[str, RouteOptions] = {}
        for inst in sorted(desired, key=lambda i: (i.app, i.id)):
            check_app_name(inst.app)
            app_domains = domains.setdefault(inst.app, [])
            for domain in inst.domains:
                check_domain(domain)
                if domain not in app_domains and domain not in claimed:
                    app_domains.append(domain)
                    claimed.add(domain)
            if inst.app not in options:
                options[inst.app] = checked_options(getattr(inst, "routing", None))
            app_members = members.setdefault(inst.app, [])
            inst_port = healthy_ports.get(inst.id)
            if inst.serve and inst_port is not None:
                _check_port(inst_port)
                app_members.append((inst.id, inst_port))
        service_servers = _service_servers(services, taken={port})
        clients = proxy_clients(frontends, machines)
    except InvalidName as exc:
        raise RenderError(f"refused to render nginx config: {exc}") from exc

    service_names = {svc.name for svc in service_servers}
    apps = tuple(
        AppServer(
            name=name,
            upstream=f"app-{name}",
            domains=tuple(domains[name]),
            ports=tuple(p for _, p in members[name]),
            instance_ids=tuple(i for i, _ in members[name]),
            max_body_mb=options[name].max_body_mb,
            read_timeout_s=options[name].read_timeout_s,
            websocket=options[name].websocket,
            service=name in service_names,
            allowed=tuple(
                c.network for c in clients if c.role == "frontend" or name in service_names
            ),
        )
        for name in sorted(domains)
        if domains[name]
    )
    longest = max((len(d) for app in apps for d in app.domains), default=0)
    return NginxView(
        listen=f"{listen_host}:{port}",
        worker_user=worker_user,
        paths=paths,
        server_names_hash_bucket_size=_bucket_size(longest),
        apps=apps,
        services=service_servers,
        clients=clients,
    )


def proxy_clients(frontends: Sequence[str], machines: Sequence[str]) -> tuple[ProxyClient, ...]:
    """The public listener's allowed sources. Each frontend address is trusted; one on
    loopback connects from 127.0.0.1 (the kernel's source for 127.0.0.0/8), so loopback is
    trusted only then (local mode), or while no frontend is known at all. Machine addresses
    are allowed with the `machine` role unless they are a frontend's too."""
    roles: dict[str, ClientRole] = {}

    def add(address: str, role: ClientRole) -> None:
        ip = ipaddress.ip_address(address)
        for source in [str(ip), *(_LOOPBACK if ip.is_loopback else ())]:
            if roles.get(source) != "frontend":
                roles[source] = role

    for address in machines:
        _check_ip(address)
        add(address, "machine")
    for address in frontends:
        _check_ip(address)
        add(address, "frontend")
    if not frontends:
        for address in _LOOPBACK:
            add(address, "frontend")
    return tuple(
        ProxyClient(network=f"{source}/{ipaddress.ip_address(source).max_prefixlen}", role=role)
        for source, role in sorted(roles.items())
    )


def _check_ip(address: str) -> None:
    try:
        ipaddress.ip_address(address)
    except ValueError as exc:
        raise InvalidName(f"proxy client {address!r} is not an IP address") from exc


def _service_servers(
    services: Iterable[ServiceRoute], *, taken: set[int]
) -> tuple[ServiceServer, ...]:
    """One listener per app service port; a port clashing with another listener is refused."""
    result: list[ServiceServer] = []
    for service in sorted(services, key=lambda s: s.name):
        check_app_name(service.name)
        check_domain(service.domain)
        _check_port(service.port)
        if service.port in taken:
            raise InvalidName(f"service port {service.port} of {service.name} is already used")
        taken.add(service.port)
        servers: list[str] = []
        for server in service.servers:
            check_address(server.address)
            _check_port(server.port)
            host = f"[{server.address}]" if _is_ipv6(server.address) else server.address
            servers.append(f"{host}:{server.port}")
        result.append(
            ServiceServer(
                name=service.name,
                upstream=f"svc-{service.name}",
                port=service.port,
                domain=service.domain,
                servers=tuple(servers),
            )
        )
    return tuple(result)


def render_files(env: jinja2.Environment, view: NginxView) -> dict[str, str]:
    """{file name relative to the conf folder: text} for ConfigApplier."""
    return {MAIN_FILE: render(env, TEMPLATE, view.as_mapping())}


def _check_port(port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidName(f"invalid port {port!r}")


def _is_ipv6(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return False


def _bucket_size(longest_name: int) -> int:
    """nginx needs a bucket that holds the longest server name (plus overhead)."""
    size = 64
    while size < longest_name + 32:
        size *= 2
    return size
