"""Registry-side bounds: process types per release, instances per type, paas.toml nesting.

A tenant's artifact is untrusted: a Procfile of 500 types would start 500 processes, and a
paas.toml nested 100,000 deep made tomllib raise RecursionError (a 500). Each is refused
with a 422 that names the limit, nothing is created, and other apps keep deploying.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.manifest import MAX_INSTANCES, MAX_PROCESS_TYPES
from tests.support.registry_app import TestRegistry, make_artifact, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path) as registry:
        registry.join("m1")
        yield registry


def _release(reg: TestRegistry, app: str, files: dict[str, str]) -> tuple[int, str]:
    sha = reg.upload(make_artifact(files))
    response = reg.client.post(
        f"/v1/apps/{app}/releases", json={"artifact_sha256": sha}, headers=reg.admin
    )
    return response.status_code, response.text


def _releases(reg: TestRegistry, app: str) -> list[object]:
    return reg.client.get(f"/v1/apps/{app}/releases", headers=reg.admin).json()


def test_a_procfile_of_500_types_is_refused(reg: TestRegistry) -> None:
    reg.create_app("many")
    procfile = "web: python app.py\n" + "".join(f"w{i}: sleep 1000\n" for i in range(500))
    status, text = _release(reg, "many", {"Procfile": procfile})
    assert status == 422, text
    assert f"at most {MAX_PROCESS_TYPES}" in text
    assert _releases(reg, "many") == []
    assert reg.client.get("/v1/apps/many/instances", headers=reg.admin).json() == []
    # At the limit it deploys, and another app is unaffected.
    at_limit = "web: x\n" + "".join(f"w{i}: x\n" for i in range(MAX_PROCESS_TYPES - 1))
    assert _release(reg, "many", {"Procfile": at_limit})[0] == 201
    reg.create_app("other")
    assert reg.deploy("other")["version"] == 1


def test_a_deeply_nested_manifest_is_a_422_not_a_500(reg: TestRegistry) -> None:
    reg.create_app("deep")
    for toml in (
        "domains = " + "[" * 100_000 + "]" * 100_000,
        "constraints = " + "{a = " * 100_000 + '"b"' + "}" * 100_000,
    ):
        status, text = _release(reg, "deep", {"Procfile": "web: x\n", "paas.toml": toml})
        assert status == 422, text[:300]
        assert "deeper than" in text
    assert _releases(reg, "deep") == []
    assert reg.client.get("/v1/health").json() == {"ok": True}


def test_scale_is_bounded_per_process_type(reg: TestRegistry) -> None:
    reg.create_app("scaled")
    assert _release(reg, "scaled", {"Procfile": "web: x\nworker: y\n"})[0] == 201
    for body in (
        {"instances": MAX_INSTANCES + 1},
        {"process_counts": {"web": MAX_INSTANCES + 1}},
        {"process_counts": {"worker": 10_000}},
    ):
        response = reg.client.patch("/v1/apps/scaled", json=body, headers=reg.admin)
        assert response.status_code == 422, (body, response.text)
    app = reg.client.get("/v1/apps/scaled", headers=reg.admin).json()
    assert app["instances"] == 1 and app["process_counts"] == {}
    too_big = {"Procfile": "web: x\n", "paas.toml": f"instances = {MAX_INSTANCES + 1}\n"}
    status, text = _release(reg, "scaled", too_big)
    assert status == 422 and f"between 0 and {MAX_INSTANCES}" in text
