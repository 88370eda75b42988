"""The agent API's data routes: export, import and delete an app's data folder on this host.

Only the registry calls them (signed like every agent API request, agent/machine/api/server.py).
Packing and unpacking run `tar` as the app's own uid (agent/machine/storage/datadir.py); the
archive passes
through agent-owned temp files in the app's staging folder, which the app cannot reach.
An import is bounded (MAX_IMPORT_BYTES, checked before the body is read) and swapped in only
once it unpacked completely: a bad archive changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from agent.machine.run.uids import AppFolders
from agent.machine.storage import datadir
from agent.procs import AppUser
from common.names import InvalidName, check_app_name

log = logging.getLogger(__name__)

MAX_IMPORT_BYTES = 256 << 20  # the whole body is signed, so it is held in memory once
CHUNK = 1 << 16


@dataclass(frozen=True)
class DataAccess:
    folders: AppFolders
    user: AppUser | None
    state_dir: Path


Verify = Callable[..., Awaitable[bytes | Response]]


def _temp_in(folder: Path, suffix: str) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".data-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


class DataRoutes:
    def __init__(self, access: Callable[[str], DataAccess], verify: Verify) -> None:
        self.access = access
        self.verify = verify

    def _target(self, request: Request) -> DataAccess | Response:
        try:
            app = check_app_name(request.path_params["app"])
        except InvalidName as exc:
            return JSONResponse({"detail": str(exc)}, 422)
        target = self.access(app)
        if not target.folders.root.is_dir():
            return JSONResponse({"detail": f"app {app} has no folder on this host"}, 404)
        return target

    async def export(self, request: Request) -> Response:
        verified = await self.verify(request)
        if isinstance(verified, Response):
            return verified
        target = self._target(request)
        if isinstance(target, Response):
            return target
        out = _temp_in(target.folders.staging, ".tar.gz")
        try:
            await asyncio.to_thread(datadir.export_to, target.folders, target.user, out)
        except datadir.DataError as exc:
            out.unlink(missing_ok=True)
            return JSONResponse({"detail": str(exc)}, 404)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        log.info("exported the data of %s (%d bytes)", target.folders.root.name, out.stat().st_size)
        return StreamingResponse(
            _stream_then_remove(out),
            media_type="application/gzip",
            headers={"content-length": str(out.stat().st_size)},
        )

    async def import_(self, request: Request) -> Response:
        verified = await self.verify(request, max_bytes=MAX_IMPORT_BYTES)
        if isinstance(verified, Response):
            return verified
        target = self._target(request)
        if isinstance(target, Response):
            return target
        archive = _temp_in(target.folders.staging, ".tar.gz")
        try:
            archive.write_bytes(verified)
            await asyncio.to_thread(datadir.import_from, target.folders, target.user, archive)
        except datadir.DataError as exc:
            return JSONResponse({"detail": f"import refused, data unchanged: {exc}"}, 422)
        finally:
            archive.unlink(missing_ok=True)
        log.info("imported data of %s (%d bytes)", target.folders.root.name, len(verified))
        return JSONResponse({"imported_bytes": len(verified)})

    async def delete(self, request: Request) -> Response:
        verified = await self.verify(request)
        if isinstance(verified, Response):
            return verified
        app_id = request.query_params.get("app_id", "")
        if not datadir.valid_app_id(app_id):
            return JSONResponse({"detail": "app_id is not an app identity"}, 422)
        try:
            app = check_app_name(request.path_params["app"])
        except InvalidName as exc:
            return JSONResponse({"detail": str(exc)}, 422)
        target = self.access(app)
        removed = await asyncio.to_thread(
            datadir.delete_data, target.folders, app_id, state_dir=target.state_dir
        )
        log.info("deleted %d data folder(s) of %s (app id %s)", removed, app, app_id)
        return JSONResponse({"removed": removed})


async def _stream_then_remove(path: Path) -> AsyncIterator[bytes]:
    try:
        with path.open("rb") as source:
            while chunk := await asyncio.to_thread(source.read, CHUNK):
                yield chunk
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
