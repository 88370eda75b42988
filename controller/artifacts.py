"""Content-addressed artifact storage: `<state_dir>/artifacts/<sha[:2]>/<sha>`.

An artifact is written to a temp file beside its final place while it is hashed, and renamed
only when the hash matches the name it was uploaded under, so a partial or wrong upload never
becomes visible.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from common.names import check_sha256
from controller.errors import Invalid, NotFound, TooLarge

MAX_MANIFEST_BYTES = 1024 * 1024


class ArtifactStore:
    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path_for(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def size(self, sha256: str) -> int:
        path = self.path_for(sha256)
        if not path.is_file():
            raise NotFound(f"artifact {sha256} is not stored")
        return path.stat().st_size

    async def save(self, sha256: str, chunks: AsyncIterator[bytes]) -> int:
        """Stream `chunks` to disk; keep them only if they hash to `sha256`. Returns the size."""
        final = self.path_for(sha256)
        if final.is_file():
            async for _ in chunks:  # idempotent re-upload: drain the body, keep the stored copy
                pass
            return final.stat().st_size
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=final.parent)
        tmp = Path(tmp_name)
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise TooLarge(
                            f"artifact is larger than the limit of {self.max_bytes} bytes"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                await run_in_threadpool(os.fsync, out.fileno())
            if digest.hexdigest() != sha256:
                raise Invalid(
                    f"artifact body hashes to {digest.hexdigest()}, not {sha256}; nothing stored"
                )
            os.replace(tmp, final)
            return size
        finally:
            tmp.unlink(missing_ok=True)

    def read_app_files(self, sha256: str) -> tuple[str, str | None]:
        """(Procfile text, paas.toml text or None) from the stored `.tar.gz`."""
        path = self.path_for(sha256)
        if not path.is_file():
            raise NotFound(f"artifact {sha256} is not stored; upload it first")
        try:
            with tarfile.open(path, "r:gz") as tar:
                procfile = _read_member(tar, "Procfile")
                manifest = _read_member(tar, "paas.toml")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise Invalid(f"artifact {sha256} is not a valid .tar.gz: {exc}") from exc
        if procfile is None:
            raise Invalid("artifact has no Procfile at its top level")
        return procfile, manifest


def _read_member(tar: tarfile.TarFile, name: str) -> str | None:
    for candidate in (name, f"./{name}"):
        try:
            member = tar.getmember(candidate)
        except KeyError:
            continue
        if not member.isfile():
            raise Invalid(f"{name} in the artifact is not a regular file")
        if member.size > MAX_MANIFEST_BYTES:
            raise Invalid(f"{name} in the artifact is larger than {MAX_MANIFEST_BYTES} bytes")
        extracted = tar.extractfile(member)
        if extracted is None:
            raise Invalid(f"{name} in the artifact cannot be read")
        data = extracted.read()
        try:
            return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
        except UnicodeDecodeError:
            raise Invalid(f"{name} in the artifact is not UTF-8 text") from None
    return None
