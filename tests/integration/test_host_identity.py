"""A join token cannot take over a live host's name; a host token acts only for its host.

The attacker holds the join token (or host A's token) and tries to become host B; host B's
token, address and role stay as they were.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.registry_app import TestRegistry, test_registry
from tests.support.registry_proc import registry_process

PAAS = str(Path(sys.executable).parent / "paas")

JOIN = "/v1/hosts/join"


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path) as registry:
        yield registry


def _body(name: str, *, role: str = "machine", address: str = "127.0.0.1") -> dict[str, object]:
    return {"name": name, "role": role, "address": address, "proxy_port": 8000}


def test_join_token_cannot_rejoin_an_existing_host(reg: TestRegistry) -> None:
    victim = reg.join("frontend-1", role="frontend", address="127.0.0.2")
    for role in ("frontend", "machine"):
        stolen = reg.client.post(
            JOIN, json=_body("frontend-1", role=role, address="127.0.0.66"),
            headers=reg.headers(reg.join_token),
        )  # fmt: skip
        assert stolen.status_code == 409, stolen.text
        detail = stolen.json()["detail"]
        assert "already joined" in detail and "paas hosts:remove frontend-1" in detail
    # Nothing changed: the victim's token works, its address and role are intact.
    assert reg.client.get("/v1/routing", headers=reg.headers(victim)).status_code == 200
    hosts = reg.client.get("/v1/hosts", headers=reg.admin).json()
    assert [(h["name"], h["role"], h["address"]) for h in hosts] == [
        ("frontend-1", "frontend", "127.0.0.2")
    ]


def test_admin_may_rejoin_and_remove_then_join_again(reg: TestRegistry) -> None:
    old = reg.join("m1")
    again = reg.client.post(JOIN, json=_body("m1", address="127.0.0.3"), headers=reg.admin)
    assert again.status_code == 200
    assert reg.client.get("/v1/hosts/m1/desired", headers=reg.headers(old)).status_code == 401
    current = again.json()["token"]
    # A join token cannot remove hosts; an admin can, and then the name is free again.
    for token in (reg.join_token, current):
        refused = reg.client.delete("/v1/hosts/m1", headers=reg.headers(token))
        assert refused.status_code == 403
    assert reg.client.delete("/v1/hosts/m1", headers=reg.admin).status_code == 204
    assert reg.client.get("/v1/hosts/m1/desired", headers=reg.headers(current)).status_code == 401
    assert reg.client.delete("/v1/hosts/m1", headers=reg.admin).status_code == 404
    assert reg.client.get("/v1/hosts", headers=reg.admin).json() == []
    fresh = reg.join("m1", address="127.0.0.4")
    assert reg.client.get("/v1/hosts/m1/desired", headers=reg.headers(fresh)).status_code == 200


def test_removed_host_instances_move_to_the_other_hosts(reg: TestRegistry) -> None:
    t1, t2 = reg.join("m1"), reg.join("m2")
    reg.create_app("web1", instances=2)
    reg.deploy("web1")
    for host, token in (("m1", t1), ("m2", t2)):
        for inst in reg.desired(host, token)["instances"]:
            reg.report(host, token, instances=[{"id": inst["id"], "state": "running"}])
    t3 = reg.join("m3")
    assert reg.client.delete("/v1/hosts/m1", headers=reg.admin).status_code == 204
    placed = reg.desired("m2", t2)["instances"] + reg.desired("m3", t3)["instances"]
    assert len([i for i in placed if i.get("desired", "run") == "run"]) == 2


def test_host_token_acts_only_for_its_own_host(reg: TestRegistry) -> None:
    a, b = reg.join("ha"), reg.join("hb", role="frontend")
    for token, other in ((a, "hb"), (b, "ha")):
        headers = reg.headers(token)
        watch = reg.client.get(f"/v1/hosts/{other}/desired", headers=headers)
        assert watch.status_code == 403
        beat = reg.client.post(f"/v1/hosts/{other}/report", json={}, headers=headers)
        assert beat.status_code == 403
        assert "belongs to host" in beat.json()["detail"]
        assert reg.client.delete(f"/v1/hosts/{other}", headers=headers).status_code == 403
        assert reg.client.post(JOIN, json=_body(other), headers=headers).status_code == 403
    # A machine token may not read the routing table (it carries every private key).
    assert reg.client.get("/v1/routing", headers=reg.headers(a)).status_code == 403
    assert (
        reg.client.post("/v1/hosts/ha/report", json={}, headers=reg.headers(a)).status_code == 204
    )


def test_takeover_over_real_http_and_hosts_remove_cli(tmp_path: Path) -> None:
    """The attack against a real `paas-registry serve`: the join token cannot re-join a live
    frontend's name; `paas hosts:remove` (admin) frees it, then the join token may."""
    with registry_process(tmp_path) as registry, httpx.Client(timeout=30) as http:
        join = {"Authorization": f"Bearer {registry.join_token}"}
        body = _body("frontend-1", role="frontend", address="127.0.0.2")
        victim = http.post(f"{registry.url}{JOIN}", json=body, headers=join)
        assert victim.status_code == 200
        victim_auth = {"Authorization": f"Bearer {victim.json()['token']}"}
        stolen = http.post(
            f"{registry.url}{JOIN}", json={**body, "address": "6.6.6.6"}, headers=join
        )
        assert stolen.status_code == 409 and "already joined" in stolen.json()["detail"]
        assert http.get(f"{registry.url}/v1/routing", headers=victim_auth).status_code == 200

        env = {**os.environ, "PAAS_REGISTRY_URL": registry.url}
        argv = [PAAS, "hosts:remove", "frontend-1", "--yes"]
        as_join = subprocess.run(
            argv, env={**env, "PAAS_TOKEN": registry.join_token},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert as_join.returncode != 0 and "403" in as_join.stderr
        removed = subprocess.run(
            argv, env={**env, "PAAS_TOKEN": registry.admin_token},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert removed.returncode == 0, removed.stderr
        assert "removed host frontend-1" in removed.stdout
        assert http.get(f"{registry.url}/v1/routing", headers=victim_auth).status_code == 401
        again = http.post(f"{registry.url}{JOIN}", json=body, headers=join)
        assert again.status_code == 200
