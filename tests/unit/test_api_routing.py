"""Per-app routing options: defaults, typed changes, bounds at the edge, and both wire shapes
the agents read (desired state for nginx, routing table for HAProxy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.errors import CliError
from cli.routing import parse_settings
from tests.support.injection_corpus import CORPUS
from tests.support.registry_app import TestRegistry, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path, domain="paas.test") as registry:
        yield registry


DEFAULTS = {
    "max_body_mb": 100,
    "read_timeout_s": 60,
    "websocket": True,
    "https_redirect": True,
    "hsts_max_age_s": 0,
    "maintenance": False,
}


def test_defaults_change_and_keep(reg: TestRegistry) -> None:
    reg.create_app("web")
    assert reg.client.get("/v1/apps/web/routing", headers=reg.admin).json() == DEFAULTS
    change = {"max_body_mb": 5, "websocket": False, "hsts_max_age_s": 31536000}
    response = reg.client.patch("/v1/apps/web/routing", json=change, headers=reg.admin)
    assert response.status_code == 200 and response.json() == {**DEFAULTS, **change}
    again = reg.client.patch("/v1/apps/web/routing", json={"maintenance": True}, headers=reg.admin)
    assert again.json() == {**DEFAULTS, **change, "maintenance": True}


@pytest.mark.parametrize(
    "body",
    [
        {"max_body_mb": 0},
        {"max_body_mb": 10241},
        {"read_timeout_s": 0},
        {"read_timeout_s": 3601},
        {"hsts_max_age_s": -1},
        {"max_body_mb": "10m; include /etc/passwd"},
        {"websocket": "on; }"},
        {"snippet": "more_set_headers x"},
    ]
    + [{"max_body_mb": value} for value in CORPUS[:12]],
)
def test_hostile_or_out_of_range_values_are_422(reg: TestRegistry, body: dict) -> None:
    reg.create_app("web")
    response = reg.client.patch("/v1/apps/web/routing", json=body, headers=reg.admin)
    assert response.status_code == 422, response.text
    assert reg.client.get("/v1/apps/web/routing", headers=reg.admin).json() == DEFAULTS


def test_agents_see_the_options(reg: TestRegistry) -> None:
    reg.create_app("web")
    reg.client.patch(
        "/v1/apps/web/routing", json={"https_redirect": False}, headers=reg.admin
    ).raise_for_status()
    token = reg.join("m1")
    desired = reg.client.get("/v1/hosts/m1/desired", headers=reg.headers(token)).json()
    assert desired["instances"] == []  # nothing deployed yet; the shape is checked below
    routing = reg.client.get("/v1/routing", headers=reg.admin).json()
    assert routing["apps"] == []  # only apps with an active release are routed
    assert reg.client.delete("/v1/apps/web", headers=reg.admin).status_code == 204
    assert reg.client.get("/v1/apps/web/routing", headers=reg.admin).status_code == 404


def test_cli_parses_typed_settings() -> None:
    change = parse_settings(("max_body_mb=50", "websocket=off", "maintenance=on"))
    assert change.model_dump(exclude_none=True) == {
        "max_body_mb": 50,
        "websocket": False,
        "maintenance": True,
    }
    for bad in ("max_body_mb=5m", "websocket=maybe", "snippet=x", "max_body_mb", "max_body_mb=0"):
        with pytest.raises(CliError):
            parse_settings((bad,))
