"""Secrets: credential-like keys are secret by name, redacted in API views unless revealed;
the CLI plan shows a diff without secret values; the service listeners render safely."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.errors import RenderError
from agent.proxy.nginx import view as nginx
from agent.proxy.render import default_template_dir, make_environment
from cli.deploy import Deployer
from cli.errors import DeployFailed
from cli.plan import env_diff
from common.manifest import Manifest
from common.wire import RouteServer, ServiceRoute
from controller.api.routes.config import is_secret_key
from tests.support.registry_app import TestRegistry, test_registry

SECRET = "hunter2-not-shown"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("API_KEY", True),
        ("DB_PASSWORD", True),
        ("GITHUB_TOKEN", True),
        ("SESSION_SECRET", True),
        ("KEY", True),
        ("KEYS_URL", False),
        ("TOKENIZER", False),
        ("DEBUG", False),
    ],
)
def test_secret_by_name(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path, domain="paas.test") as registry:
        yield registry


def test_secrets_are_redacted_in_config_and_release_listings(reg: TestRegistry) -> None:
    reg.create_app("shop", instances=0)  # a release with no instances is active at once
    reg.deploy("shop")
    body = {
        "set": {"DB_PASSWORD": SECRET, "PLAIN": "v", "OTHER": SECRET + "x"},
        "secret": ["OTHER"],
    }
    response = reg.client.patch("/v1/apps/shop/config", json=body, headers=reg.admin)
    assert response.status_code == 200, response.text
    assert SECRET not in response.text
    assert response.json()["release"] == 2
    listing = reg.client.get("/v1/apps/shop/config", headers=reg.admin)
    assert listing.json()["vars"] == {"DB_PASSWORD": "********", "OTHER": "********", "PLAIN": "v"}
    assert sorted(listing.json()["secret"]) == ["DB_PASSWORD", "OTHER"]
    releases = reg.client.get("/v1/apps/shop/releases", headers=reg.admin)
    assert SECRET not in releases.text and "config: set DB_PASSWORD, OTHER, PLAIN" in releases.text
    revealed = reg.client.get("/v1/apps/shop/config?reveal=true", headers=reg.admin).json()
    assert revealed["vars"]["DB_PASSWORD"] == SECRET
    # Only admins read config, revealed or not.
    host_token = reg.join("m1")
    denied = reg.client.get("/v1/apps/shop/config?reveal=true", headers=reg.headers(host_token))
    assert denied.status_code in (401, 403)


def test_env_diff_redacts_secrets() -> None:
    old = {"A": "1", "GONE": "x", "DB_PASSWORD": "old-secret"}
    new = {"A": "2", "NEW": "a b", "DB_PASSWORD": "new-secret", "API_KEY": "k"}
    lines = env_diff(old, new, secret={"DB_PASSWORD", "API_KEY"})
    assert lines == [
        "~ A: '1' -> '2'",
        "+ API_KEY=********",
        "~ DB_PASSWORD: ******** (changed)",
        "- GONE",
        "+ NEW='a b'",
    ]
    assert env_diff(new, new, secret=()) == []


class _Deps:
    """Just enough of RegistryClient for Deployer.wait_for_dependencies."""

    def __init__(self, healthy_after: int) -> None:
        self.calls = 0
        self.healthy_after = healthy_after

    def find_app(self, name: str) -> object:
        return object() if name == "users" else None

    def list_instances(self, name: str) -> list[SimpleNamespace]:
        self.calls += 1
        state = "running" if self.calls > self.healthy_after else "starting"
        return [SimpleNamespace(state=state, routed=state == "running")]


def test_deploy_waits_for_dependencies_and_says_so() -> None:
    lines: list[str] = []
    clock = iter(range(1000))
    deployer = Deployer(
        _Deps(healthy_after=2),  # type: ignore[arg-type]
        lines.append,
        clock=lambda: float(next(clock)),
        sleep=lambda _s: None,
    )
    deployer.wait_for_dependencies("web", Manifest(depends_on=["users", "gone"]), deadline=100)
    assert lines == [
        "waiting for dependency users of web: no healthy instance yet",
        "dependency users is healthy",
    ]
    deployer = Deployer(
        _Deps(healthy_after=10**6),  # type: ignore[arg-type]
        lines.append,
        clock=lambda: float(next(clock)),
        sleep=lambda _s: None,
    )
    with pytest.raises(DeployFailed, match="dependency users has no healthy instance"):
        deployer.wait_for_dependencies("web", Manifest(depends_on=["users"]), deadline=50)


PATHS = nginx.NginxPaths(
    pid="/var/lib/paas/nginx/nginx.pid",
    error_log="/var/lib/paas/nginx/logs/error.log",
    access_log="/var/lib/paas/nginx/logs/access.log",
    temp="/var/lib/paas/nginx/temp",
)


def _service(name: str, port: int, *servers: tuple[str, int]) -> ServiceRoute:
    return ServiceRoute(
        name=name,
        port=port,
        domain=f"{name}.paas.test",
        servers=[RouteServer(host=f"h{i}", address=a, port=p) for i, (a, p) in enumerate(servers)],
    )


def _render(services: list[ServiceRoute], port: int = 8081) -> str:
    view = nginx.build_view([], {}, address="0.0.0.0", port=port, paths=PATHS, services=services)
    return nginx.render_files(make_environment([default_template_dir()]), view)[nginx.MAIN_FILE]


def test_service_listeners_render() -> None:
    text = _render(
        [_service("users", 20001, ("10.0.0.2", 8081), ("10.0.0.3", 8081)), _service("db", 20002)]
    )
    assert "listen 127.0.0.1:20001;" in text and "listen 127.0.0.1:20002;" in text
    assert "server 10.0.0.2:8081 max_fails=1" in text and "server 10.0.0.3:8081" in text
    assert "proxy_set_header Host users.paas.test;" in text
    assert 'return 503 "app db has no healthy instance in the cluster\\n";' in text
    assert "upstream svc-db" not in text


def test_service_values_are_checked() -> None:
    with pytest.raises(RenderError, match="already used"):
        _render([_service("users", 8081)], port=8081)
    bad = ServiceRoute.model_construct(
        name="users", port=20001, domain="x.test;\n include /etc/passwd", servers=[]
    )
    with pytest.raises(RenderError, match="invalid domain"):
        _render([bad])
