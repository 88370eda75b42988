"""Who may claim which domain, over real HTTP against a real `paas-registry serve`.

A deploy token is held by a tenant: it claimed `*.com`, `*.co.uk` and `www.google.com` for
its app. Now nobody claims a public suffix or a wildcard directly over one; a deploy token
claims only names under the suffixes an admin gave it (`paas tokens:create --domains`,
default none), through `domains:add`, PATCH and a deploy's paas.toml alike; an admin claims
any other name. Every refusal changes nothing, and another app keeps its domains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.registry_app import make_artifact, sha256_of
from tests.support.registry_proc import registry_process

PAAS = str(Path(sys.executable).parent / "paas")
PUBLIC = ["com", "*.com", "co.uk", "*.co.uk", "*.github.io", "github.io", "*.uk"]


@dataclass
class Served:
    url: str
    admin: str

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A real `paas-registry serve` process (tests/support/registry_proc.py)."""
    with registry_process(tmp_path, domain="paas.test") as registry:
        yield Served(url=registry.url, admin=registry.admin_token)


def _token(api: httpx.Client, app: str, domains: list[str] | None = None) -> str:
    body = {"scope": "deploy", "app": app, **({"domains": domains} if domains else {})}
    made = api.post("/v1/tokens", json=body)
    assert made.status_code == 201, made.text
    return made.json()["token"]


def _domains(api: httpx.Client, app: str) -> list[str]:
    return api.get(f"/v1/apps/{app}").json()["domains"]


def _deploy(api: httpx.Client, app: str, toml: str) -> httpx.Response:
    data = make_artifact({"Procfile": "web: python app.py\n", "paas.toml": toml})
    sha = sha256_of(data)
    assert api.put(f"/v1/artifacts/{sha}", content=data).status_code == 200
    return api.post(f"/v1/apps/{app}/releases", json={"artifact_sha256": sha})


def test_a_plain_deploy_token_claims_no_custom_domain(served: Served) -> None:
    with served.client(served.admin) as admin:
        assert admin.post("/v1/apps", json={"name": "tenant"}).status_code == 201
        bank = admin.post("/v1/apps", json={"name": "bank", "domains": ["www.bank.example"]})
        assert bank.status_code == 201, bank.text
        deploy = _token(admin, "tenant")
    with served.client(deploy) as tenant:
        for domain in [*PUBLIC, "www.google.com", "google.com", "*.google.com", "x.bank.example"]:
            response = tenant.post("/v1/apps/tenant/domains", json={"domain": domain})
            assert response.status_code in (403, 422), (domain, response.text)
        refused = tenant.post("/v1/apps/tenant/domains", json={"domain": "www.google.com"})
        assert refused.status_code == 403
        assert "may not claim custom domains" in refused.json()["detail"]
        patched = tenant.patch("/v1/apps/tenant", json={"domains": ["www.google.com"]})
        assert patched.status_code == 403
        # The same rules for paas.toml on deploy: refused before any release is made.
        for toml in ('domains = ["*.com"]\n', 'domains = ["www.google.com"]\n'):
            response = _deploy(tenant, "tenant", toml)
            assert response.status_code in (403, 422), (toml, response.text)
        assert tenant.get("/v1/apps/tenant/releases").json() == []
        assert _domains(tenant, "tenant") == []
        # Its own cluster name still works: deploying without custom domains is fine.
        assert _deploy(tenant, "tenant", "").status_code == 201
    with served.client(served.admin) as admin:
        assert _domains(admin, "bank") == ["www.bank.example"]


def test_a_deploy_token_claims_only_under_its_allowed_suffixes(served: Served) -> None:
    with served.client(served.admin) as admin:
        assert admin.post("/v1/apps", json={"name": "shop"}).status_code == 201
        deploy = _token(admin, "shop", ["example.com", "shop.example.org"])
        listed = {t["app"]: t["domains"] for t in admin.get("/v1/tokens").json()}
        assert listed["shop"] == ["example.com", "shop.example.org"]
    with served.client(deploy) as shop:
        for domain in ("example.com", "www.example.com", "*.example.com", "a.shop.example.org"):
            added = shop.post("/v1/apps/shop/domains", json={"domain": domain})
            assert added.status_code == 201, (domain, added.text)
        for domain in ("example.org", "other.example.org", "notexample.com", "*.org", "*.com"):
            refused = shop.post("/v1/apps/shop/domains", json={"domain": domain})
            assert refused.status_code in (403, 422), (domain, refused.text)
        outside = shop.post("/v1/apps/shop/domains", json={"domain": "other.example.org"})
        assert "only under example.com, shop.example.org" in outside.json()["detail"]
        # paas.toml: allowed names deploy, others refuse the whole deploy.
        assert _deploy(shop, "shop", 'domains = ["api.example.com"]\n').status_code == 201
        assert _deploy(shop, "shop", 'domains = ["api.example.net"]\n').status_code == 403
        assert "api.example.net" not in _domains(shop, "shop")


def test_a_deploy_token_keeps_what_an_admin_gave_its_app(served: Served) -> None:
    with served.client(served.admin) as admin:
        blog = admin.post("/v1/apps", json={"name": "blog", "domains": ["blog.example.net"]})
        assert blog.status_code == 201, blog.text
        deploy = _token(admin, "blog")
    with served.client(deploy) as blog:
        assert _deploy(blog, "blog", 'domains = ["blog.example.net"]\n').status_code == 201
        assert blog.patch("/v1/apps/blog", json={"domains": ["blog.example.net"]}).is_success


def test_admin_claims_any_name_but_no_public_suffix(served: Served) -> None:
    with served.client(served.admin) as admin:
        assert admin.post("/v1/apps", json={"name": "corp"}).status_code == 201
        for domain in PUBLIC:
            response = admin.post("/v1/apps/corp/domains", json={"domain": domain})
            assert response.status_code == 422, (domain, response.text)
            assert "public suffix" in response.json()["detail"]
        assert (
            admin.post("/v1/apps", json={"name": "c2", "domains": ["*.co.uk"]}).status_code == 422
        )
        for domain in ("www.google.com", "*.example.co.uk", "user.github.io", "*.corp.internal"):
            added = admin.post("/v1/apps/corp/domains", json={"domain": domain})
            assert added.status_code == 201, (domain, added.text)
        # An allowance of a public suffix or a wildcard is refused when the token is made.
        for allowance in (["co.uk"], ["com"], ["*.example.com"]):
            body = {"scope": "deploy", "app": "corp", "domains": allowance}
            assert admin.post("/v1/tokens", json=body).status_code == 422, allowance
        body = {"scope": "admin", "domains": ["example.com"]}
        assert admin.post("/v1/tokens", json=body).status_code == 422


def test_cli_tokens_create_with_domains(served: Served) -> None:
    with served.client(served.admin) as admin:
        assert admin.post("/v1/apps", json={"name": "cli"}).status_code == 201
    env = {**os.environ, "PAAS_REGISTRY_URL": served.url, "PAAS_TOKEN": served.admin}
    argv = [PAAS, "tokens:create", "--scope", "deploy", "--app", "cli"]
    made = subprocess.run(
        [*argv, "--domains", "cli.example.com,example.org", "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    env_deploy = {**env, "PAAS_TOKEN": token}
    ok = subprocess.run(
        [PAAS, "domains:add", "cli", "www.example.org"],
        env=env_deploy, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    no = subprocess.run(
        [PAAS, "domains:add", "cli", "*.com"],
        env=env_deploy, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert no.returncode != 0 and "public suffix" in no.stderr
    bad = subprocess.run(
        [*argv, "--domains", "co.uk"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0 and "public suffix" in bad.stderr
