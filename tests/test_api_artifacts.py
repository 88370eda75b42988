"""Artifact upload: content-addressed, hash-checked, size-limited, idempotent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.testing import TestRegistry, make_artifact, sha256_of, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path / "state", max_artifact_bytes=4096) as registry:
        yield registry


def stored_files(reg: TestRegistry) -> list[str]:
    root = reg.settings.artifacts_dir
    if not root.exists():
        return []
    return sorted(str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files)


def test_upload_head_get(reg: TestRegistry) -> None:
    data = make_artifact({"Procfile": "web: x\n"})
    sha = sha256_of(data)
    assert reg.client.head(f"/v1/artifacts/{sha}", headers=reg.admin).status_code == 404
    response = reg.client.put(f"/v1/artifacts/{sha}", content=data, headers=reg.admin)
    assert response.status_code == 200
    assert response.json() == {"sha256": sha, "size": len(data)}
    assert stored_files(reg) == [f"{sha[:2]}/{sha}"]
    assert reg.client.head(f"/v1/artifacts/{sha}", headers=reg.admin).status_code == 200
    assert reg.client.get(f"/v1/artifacts/{sha}", headers=reg.admin).content == data


def test_reupload_is_idempotent(reg: TestRegistry) -> None:
    data = make_artifact({"Procfile": "web: x\n"})
    sha = reg.upload(data)
    again = reg.client.put(f"/v1/artifacts/{sha}", content=data, headers=reg.admin)
    assert again.status_code == 200 and again.json()["size"] == len(data)
    assert stored_files(reg) == [f"{sha[:2]}/{sha}"]


def test_hash_mismatch_stores_nothing(reg: TestRegistry) -> None:
    sha = sha256_of(b"something else")
    response = reg.client.put(f"/v1/artifacts/{sha}", content=b"payload", headers=reg.admin)
    assert response.status_code == 422
    assert "nothing stored" in response.json()["detail"]
    assert stored_files(reg) == []
    assert reg.client.head(f"/v1/artifacts/{sha}", headers=reg.admin).status_code == 404


def test_too_large_is_413_and_leaves_nothing(reg: TestRegistry) -> None:
    data = os.urandom(5000)
    sha = sha256_of(data)
    response = reg.client.put(f"/v1/artifacts/{sha}", content=data, headers=reg.admin)
    assert response.status_code == 413
    assert stored_files(reg) == []

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    streamed = reg.client.put(f"/v1/artifacts/{sha}", content=chunks(), headers=reg.admin)
    assert streamed.status_code == 413
    assert stored_files(reg) == []


def test_bad_sha_is_422(reg: TestRegistry) -> None:
    for sha in ["abc", "A" * 64, "../" + "a" * 61]:
        response = reg.client.put(f"/v1/artifacts/{sha}", content=b"x", headers=reg.admin)
        assert response.status_code in (404, 422), sha
    response = reg.client.put("/v1/artifacts/" + "g" * 64, content=b"x", headers=reg.admin)
    assert response.status_code == 422 and "sha256" in response.json()["detail"]
