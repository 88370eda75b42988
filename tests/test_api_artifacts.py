"""Artifact upload: content-addressed, hash-checked, size-limited, idempotent."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.testing import TestRegistry, make_artifact, sha256_of, test_registry
from tests.mounts import tmpfs


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path / "state", max_artifact_bytes=4096) as registry:
        yield registry


def stored_files(reg: TestRegistry) -> list[str]:
    root = reg.settings.artifacts_dir
    if not root.exists():
        return []
    return sorted(str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files)


@pytest.mark.sqlite_only  # looks at the files under state_dir
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


@pytest.mark.sqlite_only  # looks at the files under state_dir
def test_reupload_is_idempotent(reg: TestRegistry) -> None:
    data = make_artifact({"Procfile": "web: x\n"})
    sha = reg.upload(data)
    again = reg.client.put(f"/v1/artifacts/{sha}", content=data, headers=reg.admin)
    assert again.status_code == 200 and again.json()["size"] == len(data)
    assert stored_files(reg) == [f"{sha[:2]}/{sha}"]


@pytest.mark.sqlite_only  # looks at the files under state_dir
def test_hash_mismatch_stores_nothing(reg: TestRegistry) -> None:
    sha = sha256_of(b"something else")
    response = reg.client.put(f"/v1/artifacts/{sha}", content=b"payload", headers=reg.admin)
    assert response.status_code == 422
    assert "nothing stored" in response.json()["detail"]
    assert stored_files(reg) == []
    assert reg.client.head(f"/v1/artifacts/{sha}", headers=reg.admin).status_code == 404


@pytest.mark.sqlite_only  # looks at the files under state_dir
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


@pytest.mark.sqlite_only  # looks at the files under state_dir
def test_full_artifact_store_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    """A real full filesystem (2 MiB tmpfs) under the artifact store."""
    state = tmp_path / "state"
    with (
        tmpfs(state / "artifacts", size="2m"),
        test_registry(state, max_artifact_bytes=8 << 20) as reg,
    ):
        kept = os.urandom(1 << 20)
        kept_sha = reg.upload(kept)
        big = os.urandom(3 << 20)
        big_sha = sha256_of(big)
        response = reg.client.put(f"/v1/artifacts/{big_sha}", content=big, headers=reg.admin)
        assert response.status_code == 507, response.text
        assert response.json()["detail"] == (
            "no space left on the registry's artifact store; nothing was stored"
        )
        assert stored_files(reg) == [f"{kept_sha[:2]}/{kept_sha}"]  # no partial file
        assert reg.client.head(f"/v1/artifacts/{big_sha}", headers=reg.admin).status_code == 404
        # What was stored before is whole, and a small upload still fits.
        assert reg.client.get(f"/v1/artifacts/{kept_sha}", headers=reg.admin).content == kept
        reg.upload(make_artifact({"Procfile": "web: x\n"}))


@pytest.mark.sqlite_only  # looks at the files under state_dir
def test_full_database_disk_is_507_and_changes_nothing(tmp_path: Path) -> None:
    """The registry's whole state folder on a small tmpfs that something else filled."""
    state = tmp_path / "state"
    with tmpfs(state, size="2m"), test_registry(state) as reg:
        reg.create_app("before")
        filler = state / "filler"
        with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
        response = reg.client.post("/v1/apps", json={"name": "after"}, headers=reg.admin)
        assert response.status_code == 507, response.text
        assert "no space left on the registry's database disk" in response.json()["detail"]
        listed = reg.client.get("/v1/apps", headers=reg.admin)  # reads still answer
        assert [a["name"] for a in listed.json()] == ["before"]
        filler.unlink()
        reg.create_app("after")
