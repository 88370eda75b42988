"""The HAProxy view model: a RoutingTable + settings -> typed, validated values -> config files.

Pure: no I/O, no clock. Every decision (which backend a domain maps to, which apps have no
server, how addresses are written) is made here; the template only formats. Every value is
checked again with common.names (defence in depth): an invalid app is skipped and reported,
an invalid setting refuses the whole render.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from agent.errors import RenderError
from agent.proxy.haproxy.slots import ServerView, assign_slots
from agent.proxy.nginx.view import PROXY_CHECK_PATH
from agent.proxy.options import checked_options
from agent.proxy.render import render
from common.names import (
    InvalidName,
    check_acme_key_authorization,
    check_acme_token,
    check_address,
    check_app_name,
    check_domain,
    check_health_path,
    check_host_name,
    check_sha256,
)
from common.wire import RouteApp, RouteCert, RouteOptions, RoutingTable

# A certificate file holds PEM blocks and nothing else (HAProxy reads it, never the config).
_PEM_RE = re.compile(
    r"^(?:-----BEGIN [A-Z ]{1,40}-----\n[A-Za-z0-9+/=\n]{1,100000}-----END [A-Z ]{1,40}-----\n)+$"
)

MAIN_TEMPLATE = "haproxy.cfg.j2"
MAP_TEMPLATE = "haproxy-hosts.map.j2"
CERT_LIST_TEMPLATE = "haproxy-certs.list.j2"
CERT_LIST_FILE = "certs.list"
CHALLENGE_TEMPLATE = "haproxy-acme.map.j2"
CHALLENGE_MAP_FILE = "acme.map"
CERT_DIR = "certs"
MAIN_FILE = "haproxy.cfg"
EXACT_MAP_FILE = "hosts.map"
WILDCARD_MAP_FILE = "wildcards.map"

# Paths and user names go into the config unquoted: allow only plain characters.
_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+-]{1,1000}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class BackendView:
    name: str  # app_<app name>
    app: str
    servers: tuple[ServerView, ...]
    server_timeout_s: int = 65  # the app's read timeout + 5 s (nginx answers 504 first)
    hsts_max_age_s: int = 0  # 0: no Strict-Transport-Security header
    maintenance: bool = False  # answer 503 without asking the app
    https_redirect: bool = True  # False: served over plain HTTP too
    # The Host HAProxy's HTTP health check sends to each machine's nginx (the app's cluster
    # domain): nginx answers 503 there when the host runs no healthy instance of the app.
    check_host: str = ""
    # Answered by nginx itself (agent/proxy/nginx/view.py PROXY_CHECK_PATH), never by the app: a
    # slow
    # request to a single-worker app must not make HAProxy call the whole host dead.
    check_path: str = PROXY_CHECK_PATH


@dataclass(frozen=True)
class CertView:
    file: str  # certs/<sha256>.pem, relative to the config folder
    sni: tuple[str, ...]  # the names it is served for (crt-list SNI filters)
    pem: str = field(repr=False)  # chain + private key


@dataclass(frozen=True)
class HaproxyView:
    """Everything the HAProxy template needs, already decided and validated."""

    http_bind: str
    https_bind: str
    https_port_suffix: str  # "" for 443, ":<port>" otherwise (for the HTTP->HTTPS redirect)
    cert_path: str
    admin_socket: str
    run_as: tuple[str, str] | None  # (user, group) the workers drop to when started as root
    backends: tuple[BackendView, ...]
    exact_map: tuple[tuple[str, str], ...]  # (domain, backend), sorted
    wildcard_map: tuple[tuple[str, str], ...]  # (".suffix", backend), longest suffix first
    index: int
    plain_http_backends: tuple[str, ...] = ()  # backends served over HTTP (no redirect)
    cert_list: str = CERT_LIST_FILE  # crt-list file, relative to the config folder
    certs: tuple[CertView, ...] = ()  # user and ACME certificates, served by SNI
    challenge_map: str = CHALLENGE_MAP_FILE  # ACME http-01 token -> key authorization
    challenges: tuple[tuple[str, str], ...] = ()  # (token, key authorization), sorted


@dataclass(frozen=True)
class BuiltView:
    view: HaproxyView
    errors: tuple[str, ...] = field(default=())  # per-app problems; those apps were skipped


def endpoint(address: str, port: int) -> str:
    """`address:port` for bind/server lines; refuses anything that is not an IP or DNS name."""
    check_address(address)
    if not 1 <= port <= 65535:
        raise InvalidName(f"invalid port {port}")
    try:
        is_v6 = ipaddress.ip_address(address).version == 6
    except ValueError:
        is_v6 = False
    # HAProxy splits the port at the last colon, so IPv6 literals are written bare.
    return f"ipv6@{address}:{port}" if is_v6 else f"{address}:{port}"


def _proxy_check_path(app: RouteApp) -> str:
    """The path HAProxy checks each machine with; the app's own health path is still
    validated (a routing table carrying a hostile one is refused), but the agent on each
    machine checks the app, not HAProxy."""
    check_health_path(getattr(app, "health_path", None) or "/")
    return PROXY_CHECK_PATH


def check_path(value: str) -> str:
    if not _PATH_RE.fullmatch(value) or "/../" in f"{value}/":
        raise InvalidName(
            f"invalid path {value!r}: must be absolute and use only letters, digits and ._/+-"
        )
    return value


def build_backend(app: RouteApp, previous: BackendView | None = None) -> BackendView:
    """One app -> its backend; raises InvalidName for any value outside the strict patterns.

    Servers go into slots (agent/proxy/haproxy/slots.py); `previous` is the backend as it is live,
    so servers that stay keep their slots and a change is a runtime update, not a reload."""
    name = check_app_name(app.name)
    servers: list[ServerView] = []
    for server in app.servers:
        host = check_host_name(server.host)
        address = server.address
        servers.append(
            ServerView(
                name=host,
                endpoint=endpoint(address, server.port),
                host=host,
                address=address,
                port=server.port,
            )
        )
    options = route_options(app)
    domains = [check_domain(d.lower()) for d in app.domains]
    return BackendView(
        name=f"app_{name}",
        app=name,
        servers=assign_slots(servers, previous.servers if previous is not None else None),
        server_timeout_s=options.read_timeout_s + 5,
        hsts_max_age_s=options.hsts_max_age_s,
        maintenance=options.maintenance,
        https_redirect=options.https_redirect,
        check_host=next((d for d in domains if not d.startswith("*.")), ""),
        check_path=_proxy_check_path(app),
    )


def route_options(app: RouteApp) -> RouteOptions:
    """The app's routing options, checked again (bounded integers and real booleans)."""
    return checked_options(getattr(app, "routing", None))


def build_cert(cert: RouteCert) -> CertView:
    """One certificate -> its file and SNI names; raises InvalidName for anything unexpected."""
    sha = check_sha256(cert.sha256)
    sni = tuple(check_domain(name) for name in cert.sni)
    if not sni:
        raise InvalidName(f"certificate {sha[:12]} is served for no name")
    if not _PEM_RE.fullmatch(cert.pem):
        raise InvalidName(f"certificate {sha[:12]} is not plain PEM")
    return CertView(file=f"{CERT_DIR}/{sha}.pem", sni=sni, pem=cert.pem)


def build_view(
    table: RoutingTable,
    *,
    bind_address: str,
    http_port: int,
    https_port: int,
    cert_path: Path,
    admin_socket: Path,
    run_as: tuple[str, str] | None = None,
    previous: HaproxyView | None = None,
) -> BuiltView:
    """The view for `table`. Settings errors raise RenderError; a bad app is skipped and
    named in `errors`, so one app's problem never takes the others offline. `previous` is the
    live view: backends keep its server slots."""
    try:
        http_bind = endpoint(bind_address, http_port)
        https_bind = endpoint(bind_address, https_port)
        cert = check_path(str(cert_path))
        socket = check_path(str(admin_socket))
        if run_as is not None:
            for value in run_as:
                if not _USER_RE.fullmatch(value):
                    raise InvalidName(f"invalid user or group name {value!r}")
    except InvalidName as exc:
        raise RenderError(f"cannot render the HAProxy config: {exc}") from exc

    errors: list[str] = []
    live = {b.name: b for b in previous.backends} if previous is not None else {}
    backends: list[BackendView] = []
    owner: dict[str, str] = {}
    for app in sorted(table.apps, key=lambda item: item.name):
        try:
            backend = build_backend(app, live.get(f"app_{app.name}"))
            domains = [check_domain(domain.lower()) for domain in app.domains]
        except InvalidName as exc:
            errors.append(f"app {app.name!r} skipped: {exc}")
            continue
        if backend.name in {existing.name for existing in backends}:
            errors.append(f"app {app.name!r} listed twice; kept the first")
            continue
        backends.append(backend)
        for domain in domains:
            if domain in owner:
                errors.append(
                    f"domain {domain} of app {app.name!r} already routes to"
                    f" {owner[domain]!r}; kept that one"
                )
                continue
            owner[domain] = app.name
    exact = sorted((d, f"app_{a}") for d, a in owner.items() if not d.startswith("*."))
    wildcard = sorted(
        ((d[1:], f"app_{a}") for d, a in owner.items() if d.startswith("*.")),
        key=lambda pair: (-len(pair[0]), pair[0]),
    )
    certs: list[CertView] = []
    for route_cert in getattr(table, "certs", None) or []:
        try:
            certs.append(build_cert(route_cert))
        except InvalidName as exc:
            errors.append(f"certificate skipped: {exc}")
    challenges: list[tuple[str, str]] = []
    for challenge in getattr(table, "challenges", None) or []:
        try:
            challenges.append(
                (
                    check_acme_token(challenge.token),
                    check_acme_key_authorization(challenge.key_authorization),
                )
            )
        except InvalidName as exc:
            errors.append(f"ACME challenge skipped: {exc}")
    view = HaproxyView(
        http_bind=http_bind,
        https_bind=https_bind,
        https_port_suffix="" if https_port == 443 else f":{https_port}",
        cert_path=cert,
        admin_socket=socket,
        run_as=run_as,
        backends=tuple(backends),
        exact_map=tuple(exact),
        wildcard_map=tuple(wildcard),
        index=table.index,
        plain_http_backends=tuple(b.name for b in backends if not b.https_redirect),
        certs=tuple(certs),
        challenges=tuple(sorted(set(challenges))),
    )
    return BuiltView(view=view, errors=tuple(errors))


def render_files(env: jinja2.Environment, view: HaproxyView) -> dict[str, str]:
    """{file name: text} for the live config folder: the main file, the two host maps, the
    crt-list, the ACME challenge map and one PEM file per certificate."""
    files = {
        MAIN_FILE: render(env, MAIN_TEMPLATE, {"v": view}),
        EXACT_MAP_FILE: render(env, MAP_TEMPLATE, {"entries": view.exact_map}),
        WILDCARD_MAP_FILE: render(env, MAP_TEMPLATE, {"entries": view.wildcard_map}),
        view.cert_list: render(env, CERT_LIST_TEMPLATE, {"certs": view.certs}),
        view.challenge_map: render(env, CHALLENGE_TEMPLATE, {"entries": view.challenges}),
    }
    for cert in view.certs:
        files[cert.file] = cert.pem
    return files


def summarize(errors: Sequence[str]) -> str | None:
    return "; ".join(errors) if errors else None
