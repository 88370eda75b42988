"""An app's certificates: `paas certs`, `paas certs:add`, `paas certs:remove` (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status

from common import wire
from common.names import AppName, Sha256
from controller.auth import require_admin
from controller.certs import add_certificate, cert_view, delete_certificate, list_certificates
from controller.context import Context, get_ctx
from controller.db import bump
from controller.queries import get_app, now

router = APIRouter(prefix="/v1/apps", tags=["certificates"], dependencies=[Depends(require_admin)])


@router.post("/{app}/certs", status_code=status.HTTP_201_CREATED, response_model=wire.Cert)
def add_cert(app: AppName, body: wire.CertAdd, ctx: Context = Depends(get_ctx)) -> wire.Cert:
    with ctx.db.write() as session:
        row = get_app(session, app)
        cert = add_certificate(session, row, body, settings=ctx.settings, now=now())
        bump(session, desired=True)
        return cert_view(cert, row, ctx.settings)


@router.get("/{app}/certs", response_model=list[wire.Cert])
def list_certs(app: AppName, ctx: Context = Depends(get_ctx)) -> list[wire.Cert]:
    with ctx.db.read() as session:
        row = get_app(session, app)
        return [cert_view(c, row, ctx.settings) for c in list_certificates(session, row)]


@router.delete("/{app}/certs/{sha256}", status_code=status.HTTP_204_NO_CONTENT)
def remove_cert(app: AppName, sha256: Sha256, ctx: Context = Depends(get_ctx)) -> Response:
    with ctx.db.write() as session:
        delete_certificate(session, get_app(session, app), sha256)
        bump(session, desired=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
