"""Artifacts in the database, for registry replicas on PostgreSQL (see docs/operations.md).

Same interface as the file store (`ArtifactStore`). An upload is spooled to a local temp file
while it is hashed and counted; only a body that hashes to its name is then written, as one
`artifacts` row and its 1 MiB chunks in one transaction, so every replica sees either the whole
artifact or nothing. Downloads stream chunk by chunk, one short query each, so a 200 MB
artifact never sits in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from common.names import check_sha256
from controller.errors import Invalid, NotFound, TooLarge
from controller.store.artifact_scan import read_app_files_from
from controller.store.artifacts import spool
from controller.store.db import Database
from controller.store.models import utcnow
from controller.store.models.artifacts import ArtifactChunk, StoredArtifact

CHUNK_BYTES = 1024 * 1024


class DbArtifactStore:
    def __init__(self, db: Database, *, max_bytes: int, spool_dir: Path | None = None) -> None:
        self.db = db
        self.max_bytes = max_bytes
        self.spool_dir = spool_dir

    def exists(self, sha256: str) -> bool:
        check_sha256(sha256)
        with self.db.read() as session:
            return session.get(StoredArtifact, sha256) is not None

    def size(self, sha256: str) -> int:
        check_sha256(sha256)
        with self.db.read() as session:
            row = session.get(StoredArtifact, sha256)
        if row is None:
            raise NotFound(f"artifact {sha256} is not stored")
        return row.size

    def chunks(self, sha256: str) -> Iterator[bytes]:
        """The artifact's bytes in order, one query per chunk; NotFound before the first."""
        check_sha256(sha256)
        with self.db.read() as session:
            row = session.get(StoredArtifact, sha256)
            if row is None:
                raise NotFound(f"artifact {sha256} is not stored")
            count = row.chunks
        return self._read_chunks(sha256, count)

    def _read_chunks(self, sha256: str, count: int) -> Iterator[bytes]:
        for seq in range(count):
            with self.db.read() as session:
                data = session.execute(
                    select(ArtifactChunk.data).where(
                        ArtifactChunk.sha256 == sha256, ArtifactChunk.seq == seq
                    )
                ).scalar_one()
            yield data

    async def save(self, sha256: str, chunks: AsyncIterator[bytes]) -> int:
        check_sha256(sha256)
        if await run_in_threadpool(self.exists, sha256):
            async for _ in chunks:  # idempotent re-upload: drain the body, keep the stored copy
                pass
            return await run_in_threadpool(self.size, sha256)
        received = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal received
            async for chunk in chunks:
                received += len(chunk)
                if received > self.max_bytes:
                    raise TooLarge(f"artifact is larger than the limit of {self.max_bytes} bytes")
                yield chunk

        with tempfile.TemporaryFile(dir=self.spool_dir) as copy:
            got = await spool(counted(), copy)  # hashed and written off the event loop
            if got != sha256:
                raise Invalid(f"artifact body hashes to {got}, not {sha256}; nothing stored")
            copy.seek(0)
            await run_in_threadpool(self._store, sha256, copy, received)
        return received

    def save_file(self, sha256: str, path: Path) -> None:
        """Store a file already known to hash to `sha256` (restore)."""
        if self.exists(sha256):
            return
        with open(path, "rb") as f:
            self._store(sha256, f, path.stat().st_size)

    def _store(self, sha256: str, body: object, size: int) -> None:
        read = body.read  # type: ignore[attr-defined]
        try:
            with self.db.engine.begin() as conn:
                count = 0
                conn.execute(
                    insert(StoredArtifact).values(
                        sha256=sha256, size=size, chunks=-1, created_at=utcnow()
                    )
                )
                while data := read(CHUNK_BYTES):
                    conn.execute(insert(ArtifactChunk).values(sha256=sha256, seq=count, data=data))
                    count += 1
                conn.execute(
                    update(StoredArtifact)
                    .where(StoredArtifact.sha256 == sha256)
                    .values(chunks=count)
                )
        except IntegrityError:
            if not self.exists(sha256):  # not the same artifact uploaded through two replicas
                raise

    def all_sha256(self) -> list[str]:
        with self.db.read() as session:
            return list(session.execute(select(StoredArtifact.sha256)).scalars())

    def delete_all(self) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(delete(ArtifactChunk))
            conn.execute(delete(StoredArtifact))

    def stored_before(self, cutoff: float) -> list[str]:
        """Artifacts stored before `cutoff` (unix time)."""
        moment = datetime.fromtimestamp(cutoff, tz=UTC)
        with self.db.read() as session:
            query = select(StoredArtifact.sha256).where(StoredArtifact.created_at < moment)
            return list(session.execute(query).scalars())

    def remove(self, sha256: str) -> None:
        check_sha256(sha256)
        with self.db.engine.begin() as conn:
            conn.execute(delete(ArtifactChunk).where(ArtifactChunk.sha256 == sha256))
            conn.execute(delete(StoredArtifact).where(StoredArtifact.sha256 == sha256))

    def remove_partial_uploads(self) -> int:
        return 0  # uploads are spooled to temp files that vanish with the process

    def read_app_files(self, sha256: str) -> tuple[str, str | None]:
        with tempfile.TemporaryFile(dir=self.spool_dir) as copy:
            for data in self.chunks(sha256):
                copy.write(data)
            copy.seek(0)
            return read_app_files_from(copy, sha256)  # bounded, streamed (artifact_scan.py)
