"""Custom domains: add/remove one at a time, wildcards, conflicts, the reserved cluster domain,
and the routing table the frontends read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.api import RegistryClient
from cli.errors import ApiError
from tests.support.registry_app import TestRegistry, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path, domain="paas.test", public_https_port=443) as registry:
        yield registry


def add(reg: TestRegistry, app: str, domain: str) -> httpx.Response:
    return reg.client.post(f"/v1/apps/{app}/domains", json={"domain": domain}, headers=reg.admin)


def test_add_list_remove_with_wildcard(reg: TestRegistry) -> None:
    reg.create_app("shop")
    assert add(reg, "shop", "shop.example.com").status_code == 201
    response = add(reg, "shop", "*.shop.example.com")
    assert response.status_code == 201
    assert response.json()["domains"] == ["shop.example.com", "*.shop.example.com"]
    assert response.json()["urls"] == [
        "https://shop.paas.test/",
        "https://shop.example.com/",
        "https://*.shop.example.com/",
    ]
    assert add(reg, "shop", "shop.example.com").status_code == 201  # idempotent
    removed = reg.client.delete("/v1/apps/shop/domains/shop.example.com", headers=reg.admin)
    assert removed.status_code == 200 and removed.json()["domains"] == ["*.shop.example.com"]
    again = reg.client.delete("/v1/apps/shop/domains/shop.example.com", headers=reg.admin)
    assert again.status_code == 404 and "has no domain shop.example.com" in again.json()["detail"]


def test_a_domain_belongs_to_one_app(reg: TestRegistry) -> None:
    reg.create_app("one", domains=["www.example.com"])
    reg.create_app("two")
    response = add(reg, "two", "www.example.com")
    assert response.status_code == 409
    assert response.json()["detail"] == "domain www.example.com is already used by app one"
    # A wildcard over another app's exact name is allowed: the exact name wins when routing.
    assert add(reg, "two", "*.example.com").status_code == 201
    assert add(reg, "one", "*.example.com").status_code == 409
    # Removing frees it.
    reg.client.delete("/v1/apps/one/domains/www.example.com", headers=reg.admin)
    assert add(reg, "two", "www.example.com").status_code == 201


@pytest.mark.parametrize(
    "domain", ["paas.test", "other.paas.test", "*.paas.test", "a.b.paas.test", "*.x.paas.test"]
)
def test_names_under_the_cluster_domain_are_reserved(reg: TestRegistry, domain: str) -> None:
    reg.create_app("thief")
    response = add(reg, "thief", domain)
    assert response.status_code == 409 and "reserved" in response.json()["detail"]
    create = reg.client.post(
        "/v1/apps", json={"name": "second", "domains": [domain]}, headers=reg.admin
    )
    assert create.status_code == 409
    patch = reg.client.patch("/v1/apps/thief", json={"domains": [domain]}, headers=reg.admin)
    assert patch.status_code == 409
    assert reg.client.get("/v1/apps/thief", headers=reg.admin).json()["domains"] == []


@pytest.mark.parametrize(
    "domain",
    [
        "a.com;include /etc/passwd",
        "a.com\nserver_name evil",
        "a.com { }",
        "**.example.com",
        "a.*.example.com",
        "Example.COM",
        "exa\u0430mple.com",  # Cyrillic a
        "a" * 64 + ".com",
        "../../etc",
        "$host.example.com",
        "",
    ],
)
def test_hostile_domains_are_refused(reg: TestRegistry, domain: str) -> None:
    reg.create_app("app")
    response = add(reg, "app", domain)
    assert response.status_code == 422 and "invalid domain" in response.json()["detail"]
    assert reg.client.get("/v1/apps/app", headers=reg.admin).json()["domains"] == []


def test_unknown_app_is_404_and_needs_admin(reg: TestRegistry) -> None:
    assert add(reg, "nope", "a.example.com").status_code == 404
    token = reg.join("m1")
    response = reg.client.post(
        "/v1/apps/nope/domains", json={"domain": "a.example.com"}, headers=reg.headers(token)
    )
    assert response.status_code == 403


def test_cli_client_adds_and_removes(reg: TestRegistry) -> None:
    reg.create_app("web")
    api = RegistryClient("http://testserver", reg.admin_token, transport=reg.client._transport)
    assert api.add_domain("web", "*.web.example.org").domains == ["*.web.example.org"]
    with pytest.raises(ApiError, match=r"reserved.*\(409\)"):
        api.add_domain("web", "x.paas.test")
    assert api.remove_domain("web", "*.web.example.org").domains == []
