"""Logs and runs through the registry: what is refused before any agent is asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry_app import TestRegistry, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path) as registry:
        registry.create_app("web")
        yield registry


def test_run_needs_an_instance_and_a_valid_argv(reg: TestRegistry) -> None:
    run = reg.client.post("/v1/apps/web/run", json={"argv": ["true"]}, headers=reg.admin)
    assert run.status_code == 409 and "deploy it first" in run.json()["detail"]
    for argv in ([], [""], ["a\x00b"]):
        bad = reg.client.post("/v1/apps/web/run", json={"argv": argv}, headers=reg.admin)
        assert bad.status_code == 422, argv
    shell = reg.client.post("/v1/apps/web/run", json={"argv": "ls -l"}, headers=reg.admin)
    assert shell.status_code == 422  # a list of arguments, never a command line
    unknown = reg.client.post("/v1/apps/nope/run", json={"argv": ["true"]}, headers=reg.admin)
    assert unknown.status_code == 404


def test_a_host_without_an_agent_api_is_named(reg: TestRegistry) -> None:
    reg.join("m1")  # joined, but never reported an API port
    run = reg.client.post(
        "/v1/apps/web/run", json={"argv": ["true"], "host": "m1"}, headers=reg.admin
    )
    assert run.status_code == 409 and "has not reported an agent API" in run.json()["detail"]
    missing = reg.client.post(
        "/v1/apps/web/run", json={"argv": ["true"], "host": "m9"}, headers=reg.admin
    )
    assert missing.status_code == 404
    frontend = reg.join("f1", role="frontend")
    assert frontend
    wrong_role = reg.client.get("/v1/apps/web/logs?host=f1", headers=reg.admin)
    assert wrong_role.status_code == 409 and "not a machine" in wrong_role.json()["detail"]


def test_logs_validate_their_options(reg: TestRegistry) -> None:
    assert reg.client.get("/v1/apps/web/logs?since=yesterday", headers=reg.admin).status_code == 422
    assert reg.client.get("/v1/apps/web/logs?lines=-1", headers=reg.admin).status_code == 422
    assert reg.client.get("/v1/apps/web/logs?host=Bad_Host", headers=reg.admin).status_code == 422
    # No machine has an agent API yet: an empty stream, with the reason for each host.
    reg.join("m1")
    response = reg.client.get("/v1/apps/web/logs", headers=reg.admin)
    assert response.status_code == 200
    assert "has not reported an agent API" in response.text
