"""The HAProxy view model and template as plain text: must contain / must not contain.

Hostile values are refused by the view-model builder itself (defence in depth behind the
wire models), so they never reach a template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
from pydantic import BaseModel

from agent.errors import RenderError
from agent.proxy.haproxy.view import HaproxyView, build_backend, build_view, endpoint, render_files
from agent.proxy.render import default_template_dir, make_environment, render, template_dirs
from common.names import InvalidName
from common.wire import RouteApp, RouteOptions, RouteServer, RoutingTable

CERT = Path("/var/lib/paas/tls/default.pem")
SOCK = Path("/var/lib/paas/haproxy/admin.sock")


def app(name: str, domains: list[str], servers: list[tuple[str, str, int]]) -> RouteApp:
    return RouteApp(
        name=name,
        domains=domains,
        servers=[RouteServer(host=h, address=a, port=p) for h, a, p in servers],
    )


def hostile(model: type[BaseModel], **values: object) -> Any:
    """Build a wire model WITHOUT validation, as if something upstream let a value through."""
    return model.model_construct(**values)


def view_files(table: RoutingTable, **overrides: object) -> dict[str, str]:
    options: dict[str, object] = {
        "bind_address": "127.0.0.1",
        "http_port": 80,
        "https_port": 443,
        "cert_path": CERT,
        "admin_socket": SOCK,
    }
    options.update(overrides)
    built = build_view(table, **options)  # type: ignore[arg-type]
    assert built.errors == ()
    return render_files(make_environment(template_dirs(None)), built.view)


def test_full_config_text() -> None:
    table = RoutingTable(
        index=12,
        apps=[
            app("hello", ["hello.paas.test", "www.example.com"], [("m1", "10.0.0.5", 8081)]),
            app("wild", ["*.wild.test"], [("m1", "10.0.0.5", 8081), ("m2", "10.0.0.6", 8081)]),
            app("idle", ["idle.paas.test"], []),
        ],
    )
    files = view_files(table, https_port=8443, http_port=8080, run_as=("haproxy", "haproxy"))
    cfg = files["haproxy.cfg"]
    for needle in [
        "master-worker",
        "default-path config",
        f"stats socket {SOCK} mode 600 level admin expose-fd listeners",
        "user haproxy",
        "ssl-min-ver TLSv1.2",
        "timeout connect 5s",
        "timeout client 60s",
        "timeout server 60s",
        "timeout tunnel 1h",
        "bind 127.0.0.1:8080\n",
        f"bind 127.0.0.1:8443 ssl crt {CERT} crt-list certs.list alpn h2,http/1.1",
        "http-request redirect code 301 location https://%[req.hdr(host),lower,word(1,:)]:8443",
        "/.well-known/acme-challenge/",
        "http-request set-header X-Forwarded-Proto https",
        "http-request set-header X-Forwarded-For %[src]",
        "http-request set-header X-Forwarded-Host %[req.hdr(host)]",
        "req.hdr(host),lower,word(1,:),map(hosts.map)",
        "map_end(wildcards.map)",
        "use_backend %[var(txn.backend)]",
        "default_backend no_app",
        'string "no app is deployed at this domain"',
        "backend app_hello\n    # Every slot empty or down: say so instead of HAProxy's bare 503.\n"
        "    http-error status 503 content-type text/plain string"
        ' "app has no healthy instance"\n    balance roundrobin\n',
        "    option http-server-close\n",
        "    option httpchk\n",
        "    http-check send meth GET uri /.paas/proxy-check ver HTTP/1.1 hdr Host hello.paas.test"
        " hdr User-Agent paas-health/1\n"
        "    http-check expect status 200\n",
        "    option redispatch 1\n",
        "    default-server check inter 1s fastinter 250ms downinter 1s fall 2 rise 2",
        "    server s1 10.0.0.5:8081  # m1\n"
        "    server s2 0.0.0.0:1 disabled\n    server s3 0.0.0.0:1 disabled\n"
        "    server s4 0.0.0.0:1 disabled\n",
        "    option idle-close-on-response\n",
        "    mworker-max-reloads 50\n",
        "    server s2 10.0.0.6:8081  # m2\n",
        "backend app_idle\n    # Every slot empty or down: say so instead of HAProxy's bare 503.\n"
        '    http-error status 503 content-type text/plain string "app has no healthy instance"',
    ]:
        assert needle in cfg, needle
    for forbidden in ["option forwardfor", "{{", "{%", "daemon", "index 12"]:
        assert forbidden not in cfg, forbidden
    assert files["hosts.map"].splitlines()[1:] == [
        "hello.paas.test app_hello",
        "idle.paas.test app_idle",
        "www.example.com app_hello",
    ]
    assert files["wildcards.map"].splitlines()[1:] == [".wild.test app_wild"]


def test_port_443_redirect_has_no_port_and_no_user_when_not_root() -> None:
    cfg = view_files(RoutingTable(index=1, apps=[]))["haproxy.cfg"]
    assert "location https://%[req.hdr(host),lower,word(1,:)]%[pathq]" in cfg
    assert "\n    user " not in cfg
    assert "backend app_" not in cfg


def test_longest_wildcard_first_and_first_owner_of_a_domain_wins() -> None:
    table = RoutingTable(
        index=1,
        apps=[
            app("a", ["*.test", "same.test"], []),
            app("b", ["*.deep.test", "same.test"], []),
        ],
    )
    built = build_view(
        table,
        bind_address="127.0.0.1",
        http_port=80,
        https_port=443,
        cert_path=CERT,
        admin_socket=SOCK,
    )
    assert built.view.wildcard_map == ((".deep.test", "app_b"), (".test", "app_a"))
    assert built.view.exact_map == (("same.test", "app_a"),)
    assert len(built.errors) == 1 and "same.test" in built.errors[0]


@pytest.mark.parametrize(
    "bad_app",
    [
        hostile(RouteApp, name="hello", domains=["a.com;include"], servers=[]),
        hostile(RouteApp, name="hello", domains=["a.com\n    server evil 6.6.6.6:80"], servers=[]),
        hostile(RouteApp, name="hel\nlo", domains=[], servers=[]),
        hostile(RouteApp, name="hello backend x", domains=[], servers=[]),
        hostile(
            RouteApp,
            name="hello",
            domains=[],
            servers=[hostile(RouteServer, host="m1", address="1.2.3.4 check backup", port=80)],
        ),
        hostile(
            RouteApp,
            name="hello",
            domains=[],
            servers=[hostile(RouteServer, host="m1\nserver x", address="1.2.3.4", port=80)],
        ),
        hostile(
            RouteApp,
            name="hello",
            domains=[],
            servers=[hostile(RouteServer, host="m1", address="1.2.3.4", port=70000)],
        ),
    ],
)
def test_hostile_values_are_refused(bad_app: RouteApp) -> None:
    good = app("good", ["good.test"], [("m1", "127.0.0.1", 8081)])
    table = hostile(RoutingTable, index=3, apps=[bad_app, good])
    built = build_view(
        table,
        bind_address="127.0.0.1",
        http_port=80,
        https_port=443,
        cert_path=CERT,
        admin_socket=SOCK,
    )
    assert [backend.app for backend in built.view.backends] == ["good"]  # the others still route
    assert len(built.errors) == 1 and "skipped" in built.errors[0]
    cfg = render_files(make_environment(template_dirs(None)), built.view)["haproxy.cfg"]
    for fragment in ["include", "evil", "6.6.6.6", "check backup", "server x", "hel\nlo"]:
        assert fragment not in cfg


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("bind_address", "127.0.0.1 ssl crt /etc/x"),
        ("bind_address", "0.0.0.0\nfrontend"),
        ("cert_path", Path("/tmp/my cert.pem")),
        ("cert_path", Path("relative.pem")),
        ("admin_socket", Path("/tmp/a.sock level admin")),
        ("run_as", ("root;", "x")),
        ("https_port", 0),
    ],
)
def test_hostile_settings_refuse_the_whole_render(option: str, value: object) -> None:
    options: dict[str, object] = {
        "bind_address": "127.0.0.1",
        "http_port": 80,
        "https_port": 443,
        "cert_path": CERT,
        "admin_socket": SOCK,
        option: value,
    }
    with pytest.raises(RenderError):
        build_view(RoutingTable(index=1, apps=[]), **options)  # type: ignore[arg-type]


def test_build_backend_refuses_a_hostile_server_line() -> None:
    bad = hostile(
        RouteApp,
        name="hello",
        domains=[],
        servers=[hostile(RouteServer, host="m1", address="1.2.3.4 backup", port=80)],
    )
    with pytest.raises(InvalidName):
        build_backend(bad)


def test_endpoint_formats() -> None:
    assert endpoint("10.1.2.3", 80) == "10.1.2.3:80"
    assert endpoint("::1", 8081) == "ipv6@::1:8081"
    assert endpoint("machine-1.internal", 8081) == "machine-1.internal:8081"
    with pytest.raises(InvalidName):
        endpoint("*.x.com", 80)


def test_render_is_strict_and_operator_dir_wins(tmp_path: Path) -> None:
    (tmp_path / "haproxy-hosts.map.j2").write_text("custom {{ entries | length }}\n")
    (tmp_path / "strict.j2").write_text("{{ missing }}\n")
    env = make_environment(template_dirs(tmp_path))
    assert render(env, "haproxy-hosts.map.j2", {"entries": [1, 2]}) == "custom 2\n"
    assert "global" in render(env, "haproxy.cfg.j2", {"v": _minimal_view()})  # falls back
    with pytest.raises(RenderError, match="missing"):
        render(env, "strict.j2", {})
    assert isinstance(env.undefined, type) and issubclass(env.undefined, jinja2.StrictUndefined)
    assert (default_template_dir() / "haproxy.cfg.j2").is_file()


def _minimal_view() -> HaproxyView:
    return build_view(
        RoutingTable(index=1, apps=[]),
        bind_address="127.0.0.1",
        http_port=80,
        https_port=443,
        cert_path=CERT,
        admin_socket=SOCK,
    ).view


def test_client_address_and_scheme_headers_are_never_the_clients_word() -> None:
    """Issue 12: every X-Forwarded-* is set by HAProxy, and the other headers frameworks read
    as the client's address or scheme are deleted, on HTTPS and on plain-HTTP apps alike."""
    plain = RouteApp(
        name="plain",
        domains=["plain.paas.test"],
        servers=[],
        routing=RouteOptions(https_redirect=False),
    )
    cfg = view_files(RoutingTable(index=1, apps=[plain]))["haproxy.cfg"]
    https = cfg[cfg.index("frontend https") :]
    http = cfg[cfg.index("frontend http\n") : cfg.index("frontend https")]
    for name in ["Forwarded", "X-Real-IP", "True-Client-IP", "X-Forwarded-Prefix"]:
        assert f"http-request del-header {name}\n" in https, name
        assert f"http-request del-header {name} if plain_http\n" in http, name
    for name in ["Proto", "Host", "Port", "For"]:
        assert f"http-request set-header X-Forwarded-{name} " in https, name
