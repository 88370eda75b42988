"""Artifacts in PostgreSQL (what every registry replica reads): upload, HEAD, a streamed GET of
several chunks, idempotent re-upload, and nothing stored for a wrong hash or an oversize body."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from controller.store.db_artifacts import CHUNK_BYTES, DbArtifactStore
from controller.store.models.artifacts import ArtifactChunk, StoredArtifact
from tests.support.pg import PgServer
from tests.support.registry_app import TestRegistry, make_artifact, sha256_of, test_registry


@pytest.fixture
def reg(tmp_path: Path, postgres: PgServer) -> Iterator[TestRegistry]:
    url = postgres.new_database("art")
    limit = 5 * CHUNK_BYTES
    with test_registry(
        tmp_path, database_url=url, migrate_on_start=True, max_artifact_bytes=limit
    ) as r:
        yield r


def _rows(reg: TestRegistry) -> tuple[int, int]:
    db = reg.client.app.state.ctx.db  # type: ignore[attr-defined]
    with db.read() as session:
        artifacts = session.execute(select(func.count()).select_from(StoredArtifact)).scalar_one()
        chunks = session.execute(select(func.count()).select_from(ArtifactChunk)).scalar_one()
    return artifacts, chunks


def test_the_store_is_the_database(reg: TestRegistry) -> None:
    assert isinstance(reg.client.app.state.ctx.artifacts, DbArtifactStore)  # type: ignore[attr-defined]
    assert not (reg.settings.state_dir / "artifacts").exists()


def test_upload_head_streamed_get(reg: TestRegistry) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 12345)  # three chunks
    sha = reg.upload(data)
    head = reg.client.head(f"/v1/artifacts/{sha}", headers=reg.admin)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
    got = reg.client.get(f"/v1/artifacts/{sha}", headers=reg.admin)
    assert got.status_code == 200 and got.content == data
    assert _rows(reg) == (1, 3)
    assert reg.upload(data) == sha  # again: same answer, nothing new stored
    assert _rows(reg) == (1, 3)


def test_a_deploy_reads_its_procfile_from_the_database(reg: TestRegistry) -> None:
    reg.create_app("hello")
    release = reg.deploy("hello", {"Procfile": "web: python app.py\nworker: python w.py\n"})
    assert set(release["processes"]) == {"web", "worker"}


def test_wrong_hash_and_oversize_store_nothing(reg: TestRegistry) -> None:
    data = make_artifact({"Procfile": "web: x\n"})
    wrong = reg.client.put(f"/v1/artifacts/{'0' * 64}", content=data, headers=reg.admin)
    assert wrong.status_code == 422 and "nothing stored" in wrong.text
    big = os.urandom(5 * CHUNK_BYTES + 1)
    refused = reg.client.put(f"/v1/artifacts/{sha256_of(big)}", content=big, headers=reg.admin)
    assert refused.status_code == 413
    assert _rows(reg) == (0, 0)
    missing = reg.client.get(f"/v1/artifacts/{'1' * 64}", headers=reg.admin)
    assert missing.status_code == 404
