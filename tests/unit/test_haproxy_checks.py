"""HAProxy's health checks of each machine's nginx: a path nginx answers itself, the app's Host."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.proxy.haproxy.view import build_backend, build_view, render_files
from agent.proxy.nginx.view import PROXY_CHECK_PATH
from agent.proxy.render import make_environment, template_dirs
from common.names import InvalidName
from common.wire import RouteApp, RouteServer, RoutingTable

SERVERS = [RouteServer(host="m1", address="10.0.0.5", port=8081)]


def config_for(app: RouteApp) -> str:
    built = build_view(
        RoutingTable(index=3, apps=[app]),
        bind_address="127.0.0.1",
        http_port=80,
        https_port=443,
        cert_path=Path("/var/lib/paas/tls/default.pem"),
        admin_socket=Path("/var/lib/paas/haproxy/admin.sock"),
    )
    assert built.errors == ()
    return render_files(make_environment(template_dirs(None)), built.view)["haproxy.cfg"]


def test_check_asks_nginx_itself_with_the_apps_cluster_domain() -> None:
    """Issue 15 item 1: HAProxy checks each machine's nginx at a path nginx answers itself,
    never the app's health path: a slow request to a single-worker app queued the check
    behind it, and two 1 s timeouts took the whole app offline."""
    app = RouteApp(
        name="shop",
        domains=["shop.paas.test", "*.shop.example"],
        servers=SERVERS,
        health_path="/healthz",
    )
    cfg = config_for(app)
    assert (
        f"http-check send meth GET uri {PROXY_CHECK_PATH} ver HTTP/1.1 hdr Host shop.paas.test"
        in cfg
    )
    assert "/healthz" not in cfg
    # Issue 15: the checks are told from real traffic in logs.
    assert "hdr Host shop.paas.test hdr User-Agent paas-health/1\n" in cfg
    # nginx's own 200 (its 503 means no healthy instance there; 404/403 a wrong host).
    assert "http-check expect status 200" in cfg
    # Second line: a dead machine is skipped by retries, a silent one after 1 s.
    for needle in ["option redispatch 1", "timeout connect 1s", "fastinter 250ms", "fall 2"]:
        assert needle in cfg, needle


def test_slow_requests_are_not_cut_and_do_not_meet_a_per_server_limit() -> None:
    """An 8 s request waits for the app: the server timeout follows the app's read timeout,
    and no server has a maxconn that would answer 503 while a single worker is busy."""
    cfg = config_for(RouteApp(name="shop", domains=["shop.paas.test"], servers=SERVERS))
    assert "timeout server 65s" in cfg
    assert "maxconn" not in cfg.split("backend app_shop", 1)[1]


def test_default_health_path_is_not_used_either() -> None:
    cfg = config_for(RouteApp(name="shop", domains=["shop.paas.test"], servers=SERVERS))
    assert f"uri {PROXY_CHECK_PATH} ver HTTP/1.1 hdr Host shop.paas.test" in cfg


@pytest.mark.parametrize(
    "path", ["/ok\n    server evil 1.2.3.4:80", "/a b", "relative", "/x#y", "/" + "a" * 300]
)
def test_a_hostile_health_path_is_refused(path: str) -> None:
    bad = RouteApp.model_construct(
        name="shop", domains=["shop.paas.test"], servers=SERVERS, health_path=path
    )
    with pytest.raises(InvalidName):
        build_backend(bad)
