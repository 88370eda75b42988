"""Nothing hostile reaches a config: the corpus through every field of the API and the
agents' view models, and property-based fuzzing of both render functions, with the rendered
nginx config parsed by crossplane into exactly the expected directives."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crossplane
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.errors import RenderError
from agent.proxy.haproxy import view as haproxy
from agent.proxy.nginx import view as nginx
from agent.proxy.render import default_template_dir, make_environment, template_dirs
from common import names, wire
from tests.support.injection_corpus import CORPUS
from tests.support.registry_app import TestRegistry, test_registry

PATHS = nginx.NginxPaths(
    pid="/var/lib/paas/nginx/nginx.pid",
    error_log="/var/lib/paas/nginx/logs/error.log",
    access_log="/var/lib/paas/nginx/logs/access.log",
    temp="/var/lib/paas/nginx/temp",
)
CHECKS = [
    names.check_app_name,
    names.check_host_name,
    names.check_domain,
    names.check_label,
    names.check_address,
    names.check_health_path,
    names.check_process_type,
    names.check_env_key,
    names.check_acme_token,
    names.check_acme_key_authorization,
]
# Values that never reach a config file, or reach it as one plain word (ACME answers in the
# frontends' challenge map): plain text may pass these, nothing else.
PLAIN_OK = (
    names.check_label,
    names.check_health_path,
    names.check_acme_token,
    names.check_acme_key_authorization,
)


# ---- the corpus at the edge -------------------------------------------------------------


PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~/%-")


def _refused_or_plain(check: Any, value: str) -> None:
    """Refused, or (labels, health paths: values that never reach a config file) plain text."""
    try:
        check(value)
    except names.InvalidName:
        return
    assert check in PLAIN_OK, (check, value)
    assert set(value) <= PLAIN, (check, value)


@pytest.mark.parametrize("value", CORPUS)
def test_every_strict_pattern_refuses_the_corpus(value: str) -> None:
    for check in CHECKS:
        _refused_or_plain(check, value)


def _instance(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 1,
        "app": "shop",
        "release": 1,
        "process": "web",
        "command": "python app.py",
        "artifact_sha256": "a" * 64,
        "env": {},
        "health_path": "/",
        "domains": ["shop.paas.test"],
        "serve": True,
    }
    base.update(values)
    return base


# (model, a valid body, field, how to put the hostile value in)
FIELDS: list[tuple[type[wire.Model], dict[str, Any], str, bool]] = [
    (wire.AppCreate, {"name": "ok"}, "name", False),
    (wire.AppCreate, {"name": "ok"}, "domains", True),
    (wire.AppUpdate, {}, "domains", True),
    (wire.DomainAdd, {"domain": "a.com"}, "domain", False),
    (wire.AcmeAdd, {"domain": "a.com"}, "domain", False),
    (
        wire.HostJoin,
        {"name": "m1", "role": "machine", "address": "10.0.0.1", "proxy_port": 80},
        "name",
        False,
    ),
    (
        wire.HostJoin,
        {"name": "m1", "role": "machine", "address": "10.0.0.1", "proxy_port": 80},
        "address",
        False,
    ),
    (wire.DesiredInstance, _instance(), "app", False),
    (wire.DesiredInstance, _instance(), "domains", True),
    (wire.DesiredInstance, _instance(), "process", False),
    (wire.RouteApp, {"name": "a", "domains": [], "servers": []}, "name", False),
    (wire.RouteApp, {"name": "a", "domains": [], "servers": []}, "domains", True),
    (wire.RouteServer, {"host": "m1", "address": "10.0.0.1", "port": 80}, "host", False),
    (wire.RouteServer, {"host": "m1", "address": "10.0.0.1", "port": 80}, "address", False),
]


@pytest.mark.parametrize(("model", "body", "field", "as_list"), FIELDS)
def test_wire_models_refuse_the_corpus(
    model: type[wire.Model], body: dict[str, Any], field: str, as_list: bool
) -> None:
    model.model_validate(body)  # the valid body passes
    for value in CORPUS:
        with pytest.raises(ValidationError):
            model.model_validate({**body, field: [value] if as_list else value})


def test_wire_labels_and_env_keys_refuse_the_corpus() -> None:
    join = {"name": "m1", "role": "machine", "address": "10.0.0.1", "proxy_port": 80}
    for value in CORPUS:
        for labels in ({value: "x"}, {"zone": value}):
            try:
                wire.HostJoin.model_validate({**join, "labels": labels})
            except ValidationError:
                continue
            assert set(value) <= PLAIN, value
        with pytest.raises(ValidationError):
            wire.ConfigUpdate.model_validate({"set": {value: "x"}})


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    # Five refused calls per corpus value, faster than the per-token rate limit refills: the
    # limit is not what this test is about (a 429 would hide a missing 422).
    with test_registry(
        tmp_path_factory.mktemp("reg"), domain="paas.test", token_burst=10_000
    ) as registry:
        yield registry


def test_registry_api_refuses_the_corpus_in_every_route(reg: TestRegistry) -> None:
    reg.create_app("target")
    for value in CORPUS:
        calls: list[httpx.Response] = [
            reg.client.post("/v1/apps", json={"name": value}, headers=reg.admin),
            reg.client.post("/v1/apps", json={"name": "x", "domains": [value]}, headers=reg.admin),
            reg.client.patch("/v1/apps/target", json={"domains": [value]}, headers=reg.admin),
            reg.client.post("/v1/apps/target/domains", json={"domain": value}, headers=reg.admin),
            reg.client.post(
                "/v1/apps/target/certs/acme", json={"domain": value}, headers=reg.admin
            ),
        ]
        for response in calls:
            assert response.status_code == 422, (value, response.text)
    assert [a["name"] for a in reg.client.get("/v1/apps", headers=reg.admin).json()] == ["target"]
    assert reg.client.get("/v1/apps/target", headers=reg.admin).json()["domains"] == []


# ---- the agents' view models, bypassing the wire validation ---------------------------


def _raw_instance(app: str, domains: list[str], iid: int = 1) -> wire.DesiredInstance:
    return wire.DesiredInstance.model_construct(**_instance(id=iid, app=app, domains=domains))


@pytest.mark.parametrize("value", CORPUS)
def test_nginx_view_refuses_hostile_values(value: str) -> None:
    with pytest.raises(RenderError):
        nginx.build_view(
            [_raw_instance(value, ["a.com"])], {}, address="127.0.0.1", port=80, paths=PATHS
        )
    with pytest.raises(RenderError):
        nginx.build_view(
            [_raw_instance("shop", [value])], {}, address="127.0.0.1", port=80, paths=PATHS
        )


@pytest.mark.parametrize("value", CORPUS)
def test_haproxy_view_skips_hostile_apps(value: str) -> None:
    table = wire.RoutingTable.model_construct(
        index=1,
        apps=[
            wire.RouteApp.model_construct(name=value, domains=["a.com"], servers=[]),
            wire.RouteApp.model_construct(name="shop", domains=[value], servers=[]),
            wire.RouteApp.model_construct(
                name="web",
                domains=["web.com"],
                servers=[wire.RouteServer.model_construct(host=value, address="10.0.0.1", port=1)],
            ),
            wire.RouteApp.model_construct(
                name="api",
                domains=["api.com"],
                servers=[wire.RouteServer.model_construct(host="m1", address=value, port=1)],
            ),
        ],
    )
    built = haproxy.build_view(
        table,
        bind_address="127.0.0.1",
        http_port=80,
        https_port=443,
        cert_path=Path("/var/lib/paas/tls/default.pem"),
        admin_socket=Path("/var/lib/paas/haproxy/admin.sock"),
    )
    # Domains are compared lower-cased (DNS is case-insensitive): "App" routes as "app".
    try:
        lowered_ok = bool(names.check_domain(value.lower()))
    except names.InvalidName:
        lowered_ok = False
    assert [b.app for b in built.view.backends] == (["shop"] if lowered_ok else [])
    assert len(built.errors) == (3 if lowered_ok else 4)
    assert all(names.DOMAIN_RE.fullmatch(d) for d, _ in built.view.exact_map)


# ---- fuzzing: anything in, refused or rendered inert -----------------------------------

APP_NAMES = st.one_of(
    st.from_regex(names.APP_NAME_RE, fullmatch=True), st.sampled_from(CORPUS), st.text(max_size=20)
)
DOMAINS = st.one_of(
    st.from_regex(names.DOMAIN_RE, fullmatch=True).filter(lambda d: len(d) <= 253),
    st.sampled_from(CORPUS),
    st.text(max_size=30),
)
APPS = st.dictionaries(APP_NAMES, st.lists(DOMAINS, min_size=1, max_size=3), max_size=4)


def _parse_nginx(text: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "nginx.conf")
        Path(path).write_text(text)
        result = crossplane.parse(path, single=True, check_ctx=True, check_args=True)
    assert result["status"] == "ok", result["errors"]
    return result["config"][0]["parsed"]


def _directives(block: list[dict[str, Any]]) -> Iterator[str]:
    for item in block:
        yield item["directive"]
        if item["directive"] != "map":  # map entries are values, not directives
            yield from _directives(item.get("block", []))


BASELINE = _parse_nginx(
    nginx.render_files(
        make_environment([default_template_dir()]),
        nginx.build_view(
            [_raw_instance("shop", ["shop.paas.test"]), _raw_instance("blog", ["b.com"], 2)],
            {1: 20001},
            address="127.0.0.1",
            port=80,
            paths=PATHS,
        ),
    )[nginx.MAIN_FILE]
)
ALLOWED = set(_directives(BASELINE))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(APPS)
def test_fuzz_nginx_render_is_refused_or_exact(apps: dict[str, list[str]]) -> None:
    desired = [_raw_instance(app, domains, i) for i, (app, domains) in enumerate(apps.items())]
    try:
        view = nginx.build_view(desired, {0: 20000}, address="127.0.0.1", port=80, paths=PATHS)
    except RenderError:
        return
    text = nginx.render_files(make_environment([default_template_dir()]), view)[nginx.MAIN_FILE]
    parsed = _parse_nginx(text)
    assert set(_directives(parsed)) <= ALLOWED
    http = next(d for d in parsed if d["directive"] == "http")["block"]
    servers = [d["block"] for d in http if d["directive"] == "server"]
    names_seen = [next(x["args"] for x in s if x["directive"] == "server_name") for s in servers]
    assert names_seen == [["_"]] + [list(app.domains) for app in view.apps]
    for app in view.apps:
        assert app.name in apps and all(d in apps[app.name] for d in app.domains)
    upstreams = [d["args"] for d in http if d["directive"] == "upstream"]
    assert upstreams == [[app.upstream] for app in view.apps if app.ports]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(APPS, st.one_of(st.sampled_from(CORPUS), st.from_regex(names.HOST_NAME_RE, fullmatch=True)))
def test_fuzz_haproxy_render_is_skipped_or_exact(apps: dict[str, list[str]], host: str) -> None:
    table = wire.RoutingTable.model_construct(
        index=1,
        apps=[
            wire.RouteApp.model_construct(
                name=name,
                domains=domains,
                servers=[wire.RouteServer.model_construct(host=host, address="10.0.0.1", port=81)],
            )
            for name, domains in apps.items()
        ],
    )
    built = haproxy.build_view(
        table,
        bind_address="127.0.0.1",
        http_port=80,
        https_port=443,
        cert_path=Path("/var/lib/paas/tls/default.pem"),
        admin_socket=Path("/var/lib/paas/haproxy/admin.sock"),
    )
    files = haproxy.render_files(make_environment(template_dirs(None)), built.view)
    backends = {b.name for b in built.view.backends}
    for name in (haproxy.EXACT_MAP_FILE, haproxy.WILDCARD_MAP_FILE):
        for line in files[name].splitlines():
            if not line or line.startswith("#"):
                continue
            key, backend = line.split(" ")
            assert backend in backends
            assert names.DOMAIN_RE.fullmatch(key.lstrip("."))
    cfg = files[haproxy.MAIN_FILE].splitlines()
    assert [line for line in cfg if line.startswith("backend ")] == ["backend no_app"] + [
        f"backend {b.name}" for b in built.view.backends
    ]
    servers = [line.split()[:3] for line in cfg if line.strip().startswith("server ")]
    assert servers == [
        ["server", s.name, s.endpoint] for b in built.view.backends for s in b.servers
    ]
    for backend in built.view.backends:
        assert backend.app in apps and names.APP_NAME_RE.fullmatch(backend.app)
