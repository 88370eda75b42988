"""HAProxy's health checks of each machine's nginx use the app's health path and Host."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.haproxy import build_backend, build_view, render_files
from agent.render import make_environment, template_dirs
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


def test_check_uses_the_apps_health_path_and_cluster_domain() -> None:
    app = RouteApp(
        name="shop",
        domains=["shop.paas.test", "*.shop.example"],
        servers=SERVERS,
        health_path="/healthz",
    )
    cfg = config_for(app)
    assert "http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host shop.paas.test" in cfg
    # Issue 15: apps can tell the checks from real traffic in their logs.
    assert "hdr Host shop.paas.test hdr User-Agent paas-health/1\n" in cfg
    assert "http-check expect ! rstatus ^5" in cfg
    # Second line: a dead machine is skipped by retries, a silent one after 1 s.
    for needle in ["option redispatch 1", "timeout connect 1s", "fastinter 250ms", "fall 2"]:
        assert needle in cfg, needle


def test_default_health_path_is_root() -> None:
    cfg = config_for(RouteApp(name="shop", domains=["shop.paas.test"], servers=SERVERS))
    assert "uri / ver HTTP/1.1 hdr Host shop.paas.test" in cfg


@pytest.mark.parametrize(
    "path", ["/ok\n    server evil 1.2.3.4:80", "/a b", "relative", "/x#y", "/" + "a" * 300]
)
def test_a_hostile_health_path_is_refused(path: str) -> None:
    bad = RouteApp.model_construct(
        name="shop", domains=["shop.paas.test"], servers=SERVERS, health_path=path
    )
    with pytest.raises(InvalidName):
        build_backend(bad)
