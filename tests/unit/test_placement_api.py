"""Placement through the API: paas.toml constraints select hosts by the labels they joined with."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.manifest import ManifestError, parse_manifest
from tests.support.registry_app import TestRegistry, test_registry


def _join(reg: TestRegistry, name: str, labels: dict[str, str]) -> None:
    body = {"name": name, "role": "machine", "address": "127.0.0.1", "proxy_port": 8000}
    response = reg.client.post(
        "/v1/hosts/join", json={**body, "labels": labels}, headers=reg.headers(reg.join_token)
    )
    assert response.status_code == 200, response.text


def test_constraints_from_paas_toml_choose_the_hosts(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        _join(reg, "m1", {"zone": "a"})
        _join(reg, "m2", {"zone": "b"})
        _join(reg, "m3", {"zone": "b"})
        reg.create_app("shop")
        files = {
            "Procfile": "web: python app.py\n",
            "paas.toml": '[app]\ninstances = 2\nconstraints = {zone = "b"}\n',
        }
        placed = sorted(i["host"] for i in reg.deploy("shop", files)["instances"])
        assert placed == ["m2", "m3"]
        hosts = {h["name"]: h for h in reg.client.get("/v1/hosts", headers=reg.admin).json()}
        assert hosts["m1"]["labels"] == {"zone": "a"}


def test_a_constraint_no_host_meets_fails_the_deploy_clearly(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        _join(reg, "m1", {"zone": "a"})
        reg.create_app("shop")
        files = {"Procfile": "web: python app.py\n", "paas.toml": 'constraints = {zone = "z"}\n'}
        release = reg.deploy("shop", files)
        assert release["status"] == "failed"
        assert "no up machine host has the labels zone=z" in release["error"]


@pytest.mark.parametrize(
    "text",
    ['constraints = "zone=a"', "constraints = {zone = 1}", 'constraints = {"bad key" = "a"}'],
)
def test_bad_constraints_are_refused(text: str) -> None:
    with pytest.raises(ManifestError, match="constraints"):
        parse_manifest(text)
