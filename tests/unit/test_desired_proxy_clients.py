"""The registry tells each machine who its proxy may serve (issue 12): the addresses of the
frontend and machine hosts, in the desired state it watches; a joining frontend changes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry_app import TestRegistry, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path, domain="paas.test") as registry:
        yield registry


def test_machines_are_told_the_frontend_and_machine_addresses(reg: TestRegistry) -> None:
    m1 = reg.join("m1", address="198.18.0.11")
    reg.join("m2", address="198.18.0.12")
    desired = reg.client.get("/v1/hosts/m1/desired", headers=reg.headers(m1)).json()
    assert desired["frontends"] == []  # none yet: the agent serves loopback only
    assert desired["machines"] == ["198.18.0.11", "198.18.0.12"]
    index = desired["index"]

    front = reg.join("f1", role="frontend", address="198.18.0.2", port=443)
    desired = reg.client.get(
        f"/v1/hosts/m1/desired?index={index}&wait=1s", headers=reg.headers(m1)
    ).json()
    assert desired["index"] > index  # a watcher wakes up for it
    assert desired["frontends"] == ["198.18.0.2"]
    assert desired["machines"] == ["198.18.0.11", "198.18.0.12"]

    # A frontend's own desired state carries none of it.
    mine = reg.client.get("/v1/hosts/f1/desired", headers=reg.headers(front))
    assert mine.status_code == 200, mine.text
    assert (mine.json()["frontends"], mine.json()["machines"]) == ([], [])
