"""Content-addressed artifacts: uploaded by the CLI, fetched by machine agents."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from common import wire
from common.names import Sha256
from controller.api.auth import (
    require_artifact_downloader,
    require_artifact_reader,
    require_uploader,
)
from controller.api.context import get_ctx
from controller.context import Context
from controller.errors import NotFound, TooLarge
from controller.store.artifacts import ArtifactStore

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.head("/{sha256}", dependencies=[Depends(require_artifact_reader)])
def artifact_exists(sha256: Sha256, ctx: Context = Depends(get_ctx)) -> Response:
    size = ctx.artifacts.size(sha256)
    return Response(status_code=200, headers={"Content-Length": str(size)})


@router.get(
    "/{sha256}",
    dependencies=[Depends(require_artifact_downloader)],
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}}},
)
def download_artifact(sha256: Sha256, ctx: Context = Depends(get_ctx)) -> Response:
    if isinstance(ctx.artifacts, ArtifactStore):
        path = ctx.artifacts.path_for(sha256)
        if not path.is_file():
            raise NotFound(f"artifact {sha256} is not stored")
        return FileResponse(path, media_type="application/gzip")
    size = ctx.artifacts.size(sha256)  # in the database (PostgreSQL): streamed chunk by chunk
    return StreamingResponse(
        iterate_in_threadpool(ctx.artifacts.chunks(sha256)),
        media_type="application/gzip",
        headers={"Content-Length": str(size)},
    )


@router.put("/{sha256}", response_model=wire.Artifact, dependencies=[Depends(require_uploader)])
async def upload_artifact(
    sha256: Sha256, request: Request, ctx: Context = Depends(get_ctx)
) -> wire.Artifact:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > ctx.artifacts.max_bytes:
        raise TooLarge(f"artifact is larger than the limit of {ctx.artifacts.max_bytes} bytes")
    size = await ctx.artifacts.save(sha256, request.stream())
    return wire.Artifact(sha256=sha256, size=size)
