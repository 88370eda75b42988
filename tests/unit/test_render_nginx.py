"""nginx view model and template as plain text: must contain / must not contain."""

from __future__ import annotations

import pytest

from agent.errors import RenderError
from agent.proxy.nginx import view as nginx
from agent.proxy.render import default_template_dir, make_environment
from common.wire import DesiredInstance, RouteServer, ServiceRoute

PATHS = nginx.NginxPaths(
    pid="/var/lib/paas/nginx/nginx.pid",
    error_log="/var/lib/paas/nginx/logs/error.log",
    access_log="/var/lib/paas/nginx/logs/access.log",
    temp="/var/lib/paas/nginx/temp",
)


def _inst(iid: int, app: str = "shop", *, serve: bool = True, **extra: object) -> DesiredInstance:
    fields: dict[str, object] = {
        "id": iid,
        "app": app,
        "release": 1,
        "process": "web",
        "command": "python app.py",
        "artifact_sha256": "a" * 64,
        "env": {},
        "health_path": "/",
        "domains": [f"{app}.paas.test", f"*.{app}.example.com"],
        "serve": serve,
    }
    fields.update(extra)
    return DesiredInstance.model_validate(fields)


def _render(view: nginx.NginxView) -> str:
    env = make_environment([default_template_dir()])
    return nginx.render_files(env, view)[nginx.MAIN_FILE]


def _view(desired: list[DesiredInstance], ports: dict[int, int], **kw: object) -> nginx.NginxView:
    args: dict[str, object] = {"address": "127.0.0.1", "port": 8081, "paths": PATHS}
    args.update(kw)
    return nginx.build_view(desired, ports, **args)  # type: ignore[arg-type]


def test_upstream_holds_only_serving_healthy_instances() -> None:
    desired = [_inst(1), _inst(2), _inst(3, serve=False), _inst(4)]
    view = _view(desired, {1: 20001, 2: 20002, 3: 20003})  # 4 is not healthy yet
    text = _render(view)
    assert view.routed_ids == {1, 2}
    assert "upstream app-shop {" in text
    assert "server 127.0.0.1:20001" in text
    assert "server 127.0.0.1:20002" in text
    assert "20003" not in text
    assert "keepalive 32;" in text
    assert "listen 127.0.0.1:8081;" in text
    assert "server_name shop.paas.test *.shop.example.com;" in text
    assert "proxy_pass http://app-shop;" in text
    assert "proxy_http_version 1.1;" in text
    assert "proxy_set_header Host $http_host;" in text
    assert "proxy_set_header X-Forwarded-For $paas_forwarded_for;" in text
    assert "proxy_set_header X-Forwarded-Proto $paas_forwarded_proto;" in text
    assert "proxy_set_header X-Forwarded-Host $paas_forwarded_host;" in text
    assert "proxy_set_header X-Request-ID $paas_request_id;" in text
    assert '""      $request_id;' in text
    assert "pid /var/lib/paas/nginx/nginx.pid;" in text
    assert "client_body_temp_path /var/lib/paas/nginx/temp/client_body;" in text


def test_default_server_answers_404() -> None:
    text = _render(_view([], {}))
    assert "listen 127.0.0.1:8081 default_server;" in text
    assert 'return 404 "no app is deployed at this domain\\n";' in text
    assert "upstream app-" not in text
    assert "proxy_pass" not in text


def test_app_without_routed_instance_answers_503_and_has_no_upstream() -> None:
    text = _render(_view([_inst(1, "blog", serve=False)], {1: 20001}))
    assert "server_name blog.paas.test *.blog.example.com;" in text
    assert "return 503" in text
    assert "upstream app-blog" not in text
    assert "proxy_pass" not in text


def test_two_apps_each_get_their_server() -> None:
    view = _view([_inst(1, "shop"), _inst(2, "blog")], {1: 20001, 2: 20002})
    text = _render(view)
    assert [a.name for a in view.apps] == ["blog", "shop"]
    assert text.count("default_server") == 1
    assert "upstream app-blog {" in text and "upstream app-shop {" in text


def test_worker_user_only_when_given() -> None:
    assert "user www-data;" in _render(_view([], {}, worker_user="www-data"))
    assert "\nuser " not in _render(_view([], {}))


def test_ipv6_listen_in_brackets() -> None:
    assert "listen [::1]:8081 default_server;" in _render(_view([], {}, address="::1"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "127.0.0.1; include /etc/passwd"}, "address"),
        ({"worker_user": "root; daemon off"}, "worker user"),
        ({"port": 0}, "port"),
        (
            {"paths": nginx.NginxPaths(pid="/x;y", error_log="/a", access_log="/b", temp="/c")},
            "path",
        ),
    ],
)
def test_invalid_values_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RenderError, match=message):
        _view([_inst(1)], {1: 20001}, **kwargs)


def test_invalid_domain_that_bypassed_the_registry_is_refused() -> None:
    bad = _inst(1).model_copy(update={"domains": ["evil.com; }"]})  # no validation on copy
    with pytest.raises(RenderError, match="domain"):
        _view([bad], {1: 20001})


def test_invalid_instance_port_is_refused() -> None:
    with pytest.raises(RenderError, match="port"):
        _view([_inst(1)], {1: 70000})


def test_domain_claimed_twice_goes_to_one_app_only() -> None:
    a = _inst(1, "alpha", domains=["shared.example.com", "alpha.paas.test"])
    b = _inst(2, "beta", domains=["shared.example.com", "beta.paas.test"])
    text = _render(_view([a, b], {1: 20001, 2: 20002}))
    assert text.count("shared.example.com") == 1


def test_long_domain_gets_a_big_enough_hash_bucket() -> None:
    long_domain = ".".join(["a" * 60] * 4)  # 243 characters
    view = _view([_inst(1, domains=[long_domain])], {1: 20001})
    assert view.server_names_hash_bucket_size >= 256


# ---- issue 12: only the frontends (and machine proxies, for service apps) are served ---------


def _service(name: str, port: int) -> ServiceRoute:
    return ServiceRoute(
        name=name,
        port=port,
        domain=f"{name}.paas.test",
        servers=[RouteServer(host="m1", address="10.0.0.5", port=8081)],
    )


def test_public_listener_serves_frontends_and_machines_for_service_apps_only() -> None:
    view = _view(
        [_inst(1, "shop"), _inst(2, "users")],
        {1: 20001, 2: 20002},
        services=[_service("users", 21000)],
        frontends=["10.0.0.2", "fd00::2"],
        machines=["10.0.0.5", "10.0.0.2"],
    )
    assert view.clients == (
        nginx.ProxyClient("10.0.0.2/32", "frontend"),  # a frontend wins over a machine
        nginx.ProxyClient("10.0.0.5/32", "machine"),
        nginx.ProxyClient("fd00::2/128", "frontend"),
    )
    text = _render(view)
    geo = text[text.index("geo $paas_client {") :]
    geo = geo[: geo.index("}")]
    assert geo.split("\n")[1:-1] == [
        "        default deny;",
        "        10.0.0.2/32 frontend;",
        "        10.0.0.5/32 machine;",
        "        fd00::2/128 frontend;",
    ]
    assert "127.0.0.1" not in geo  # no frontend on loopback: loopback is nobody
    shop = text[text.index("server_name shop.paas.test") :]
    assert shop.index("if ($paas_client != frontend) {") < shop.index("location /")
    users = text[text.index("server_name users.paas.test") :]
    assert users.index("if ($paas_client = deny) {") < users.index("location /")
    assert "allow 10.0.0.2/32;\n            allow fd00::2/128;\n            deny all;" in shop
    users_location = users[users.index("location /") :]
    assert "allow 10.0.0.2/32;\n            allow 10.0.0.5/32;\n" in users_location
    assert "deny all;" in users_location
    default = text[text.index("default_server;") :]
    assert default.index("return 403") < default.index("return 404")


def test_loopback_is_trusted_only_with_a_loopback_frontend_or_none_known() -> None:
    local = _view([], {}, frontends=["127.0.0.1"], machines=["127.0.0.1"]).clients
    assert {(c.network, c.role) for c in local} == {
        ("127.0.0.1/32", "frontend"),
        ("::1/128", "frontend"),
    }
    other = _view([], {}, frontends=["127.0.0.5"]).clients
    assert ("127.0.0.1/32", "frontend") in {(c.network, c.role) for c in other}
    assert ("127.0.0.5/32", "frontend") in {(c.network, c.role) for c in other}
    unknown = _view([], {}).clients  # no frontend joined yet: a single host, loopback only
    assert {c.network for c in unknown} == {"127.0.0.1/32", "::1/128"}
    with pytest.raises(RenderError, match="not an IP address"):
        _view([], {}, frontends=["frontend.example.com"])
    with pytest.raises(RenderError, match="not an IP address"):
        _view([], {}, machines=["10.0.0.5; allow all"])


def test_headers_public_listener_passes_frontend_values_service_listener_sets_its_own() -> None:
    text = _render(_view([_inst(1, "users")], {1: 20001}, services=[_service("users", 21000)]))
    app = text[text.index("server_name users.paas.test") :]
    app = app[: app.index("\n    }\n")]
    for needle in [
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $paas_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $paas_forwarded_proto;",
        "proxy_set_header X-Forwarded-Host $paas_forwarded_host;",
        "proxy_set_header X-Forwarded-Port $paas_forwarded_port;",
    ]:
        assert needle in app, needle
    assert "map $paas_client $paas_forwarded_for {\n        frontend $paas_sent_for;\n" in text
    assert "        default  $remote_addr;" in text
    service = text[text.index("listen 127.0.0.1:21000;") :]
    for needle in [
        "proxy_set_header Host users.paas.test;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host users.paas.test;",
        "proxy_set_header X-Forwarded-Port $server_port;",
        "proxy_set_header X-Request-ID $request_id;",
    ]:
        assert needle in service, needle
    assert "$http_x_forwarded" not in service and "$paas_" not in service.replace(
        "$paas_connection", ""
    )


def test_proxy_check_is_answered_by_nginx_only_where_the_app_is_routed() -> None:
    """Issue 15 item 1: HAProxy's check path is answered by nginx itself (a busy app is not a
    dead host), after the frontend-only rule, and only in a block that routes instances;
    an app with none here keeps answering 503, so the check marks this host down for it."""
    text = _render(_view([_inst(1), _inst(2, app="blog")], {1: 20001}))
    shop = text.split("server_name shop.paas.test", 1)[1].split("server_name", 1)[0]
    blog = text.split("server_name blog.paas.test", 1)[1].split("server_name", 1)[0]
    check = f"location = {nginx.PROXY_CHECK_PATH} {{"
    assert check in shop
    assert shop.index('return 403 "forbidden') < shop.index(check) < shop.index("location / {")
    assert 'return 200 "ok\\n";' in shop.split(check, 1)[1].split("}", 1)[0]
    assert check not in blog
    assert 'return 503 "app blog has no running instance on this host' in blog


def test_slow_requests_are_not_cut_by_nginx() -> None:
    """An 8 s request (one sync worker) reaches its answer: the read timeout is the app's
    (60 s unless its routing options say otherwise)."""
    text = _render(_view([_inst(1)], {1: 20001}))
    assert "proxy_read_timeout 60s;" in text
