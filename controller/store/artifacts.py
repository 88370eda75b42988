"""Content-addressed artifact storage: `<state_dir>/artifacts/<sha[:2]>/<sha>`.

An artifact is written to a temp file beside its final place while it is hashed, and renamed
only when the hash matches the name it was uploaded under, so a partial or wrong upload never
becomes visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from starlette.concurrency import run_in_threadpool

from common.names import check_sha256
from controller.errors import InsufficientStorage, Invalid, NotFound, StorageFailed, TooLarge
from controller.store.artifact_scan import read_app_files_from

log = logging.getLogger("paas.registry")

UPLOAD_PREFIX = ".upload-"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
SPOOL_BATCH_BYTES = 1024 * 1024
# Hashing and writing an upload's bytes happen here, never on the event loop (40 uploads
# once hashed 2.7 GB a minute there, and every API answer waited behind it). Its own threads:
# uploads never take the worker threads the sync routes and hosts' reports need.
_spool_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="artifact-spool")


async def spool(chunks: AsyncIterator[bytes], out: BinaryIO) -> str:
    """Write `chunks` to `out` and hash them, in batches of about SPOOL_BATCH_BYTES, off the
    event loop; the sha256 (hex) of everything written."""
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    batch: list[bytes] = []
    held = 0
    async for chunk in chunks:
        batch.append(chunk)
        held += len(chunk)
        if held >= SPOOL_BATCH_BYTES:
            data, batch, held = b"".join(batch), [], 0
            await loop.run_in_executor(_spool_threads, _write_hashed, out, digest, data)
    await loop.run_in_executor(_spool_threads, _write_hashed, out, digest, b"".join(batch))
    return digest.hexdigest()


def _write_hashed(out: BinaryIO, digest: hashlib._Hash, data: bytes) -> None:
    digest.update(data)
    out.write(data)
    out.flush()


class ArtifactStore:
    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path_for(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        """Also marks it as just wanted (mtime): a deploy that found it stored (HEAD) and
        is about to release it gets the whole GC grace period (controller/store/artifact_gc.py)."""
        path = self.path_for(sha256)
        if not path.is_file():
            return False
        with contextlib.suppress(OSError):
            os.utime(path)
        return True

    def size(self, sha256: str) -> int:
        path = self.path_for(sha256)
        if not path.is_file():
            raise NotFound(f"artifact {sha256} is not stored")
        return path.stat().st_size

    async def save(self, sha256: str, chunks: AsyncIterator[bytes]) -> int:
        """Stream `chunks` to disk; keep them only if they hash to `sha256`. Returns the size.

        A full filesystem is InsufficientStorage (507) and leaves no file behind; the rest of
        the body is still read (up to the size limit) so the client gets the answer instead
        of a broken pipe.
        """
        final = self.path_for(sha256)
        if final.is_file():
            async for _ in chunks:  # idempotent re-upload: drain the body, keep the stored copy
                pass
            return final.stat().st_size
        tmp: Path | None = None
        received = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal received
            async for chunk in chunks:
                received += len(chunk)
                if received > self.max_bytes:
                    raise TooLarge(f"artifact is larger than the limit of {self.max_bytes} bytes")
                yield chunk

        body = counted()
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=final.parent)
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as out:
                got = await spool(body, out)
                await run_in_threadpool(os.fsync, out.fileno())
            if got != sha256:
                raise Invalid(f"artifact body hashes to {got}, not {sha256}; nothing stored")
            os.replace(tmp, final)
            return received
        except OSError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
                tmp = None
            async for _ in body:  # the client is told why, not cut off mid-upload
                pass
            if exc.errno in NO_SPACE:
                log.error("artifact %s refused: no space left in %s", sha256[:12], self.root)
                raise InsufficientStorage(
                    "no space left on the registry's artifact store; nothing was stored"
                ) from exc
            raise StorageFailed(
                f"the registry's artifact store could not write: {exc.strerror or exc};"
                " nothing was stored"
            ) from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def remove_partial_uploads(self) -> int:
        """Delete temp files of uploads cut short by a crash (they were never visible)."""
        removed = 0
        for path in self.root.glob(f"*/{UPLOAD_PREFIX}*") if self.root.is_dir() else []:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        if removed:
            log.info("removed %d partial artifact upload(s) left by an interrupted upload", removed)
        return removed

    def read_app_files(self, sha256: str) -> tuple[str, str | None]:
        """(Procfile text, paas.toml text or None) from the stored `.tar.gz`, read within
        bounds (controller/store/artifact_scan.py)."""
        try:
            raw = self.path_for(sha256).open("rb")
        except FileNotFoundError:
            raise NotFound(f"artifact {sha256} is not stored; upload it first") from None
        with raw:
            return read_app_files_from(raw, sha256)

    def chunks(self, sha256: str) -> Iterator[bytes]:
        """The artifact's bytes in 1 MiB pieces; NotFound before the first."""
        path = self.path_for(sha256)
        try:
            f = open(path, "rb")  # noqa: SIM115  (closed by the generator)
        except FileNotFoundError:
            raise NotFound(f"artifact {sha256} is not stored") from None
        return _read_file(f)

    def save_file(self, sha256: str, path: Path) -> None:
        """Store a file already known to hash to `sha256` (restore)."""
        final = self.path_for(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=final.parent)
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)

    def all_sha256(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.glob("*/*") if not p.name.startswith("."))

    def delete_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def stored_before(self, cutoff: float) -> list[str]:
        """Artifacts last stored or asked about before `cutoff` (unix time)."""
        found = []
        for sha in self.all_sha256():
            with contextlib.suppress(OSError):
                if self.path_for(sha).stat().st_mtime < cutoff:
                    found.append(sha)
        return found

    def remove(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)


def _read_file(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while data := f.read(1024 * 1024):
            yield data
