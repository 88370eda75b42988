"""An app's certificates: `paas certs`, `paas certs:add`, `paas certs:remove`, and ACME:
`paas certs:auto`, `paas certs:auto:remove` (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response, status

from common import wire
from common.names import AppName, Domain, Sha256
from controller.acme import service as acme
from controller.api.auth import require_app_scope
from controller.api.context import get_ctx
from controller.api.queries import get_app
from controller.context import Context
from controller.core.certs import add_certificate, cert_view, delete_certificate, list_certificates
from controller.core.clock import now
from controller.store.db import bump

router = APIRouter(
    prefix="/v1/apps",
    tags=["certificates"],
    dependencies=[Depends(require_app_scope)],
)


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


@router.post(
    "/{app}/certs/acme", status_code=status.HTTP_201_CREATED, response_model=wire.AcmeStatus
)
def add_acme(
    app: AppName, body: wire.AcmeAdd, request: Request, ctx: Context = Depends(get_ctx)
) -> wire.AcmeStatus:
    """Get a certificate for the domain by ACME now, and renew it before it expires."""
    with ctx.db.write() as session:
        row = get_app(session, app)
        found = acme.request_domain(session, row, body.domain, settings=ctx.settings)
        view = acme.status_view(session, found, row, ctx.settings)
    request.app.state.acme.wake.set()
    return view


@router.get("/{app}/certs/acme", response_model=list[wire.AcmeStatus])
def list_acme(app: AppName, ctx: Context = Depends(get_ctx)) -> list[wire.AcmeStatus]:
    with ctx.db.read() as session:
        row = get_app(session, app)
        return [
            acme.status_view(session, found, row, ctx.settings)
            for found in acme.list_domains(session, row)
        ]


@router.delete("/{app}/certs/acme/{domain}", status_code=status.HTTP_204_NO_CONTENT)
def remove_acme(app: AppName, domain: Domain, ctx: Context = Depends(get_ctx)) -> Response:
    with ctx.db.write() as session:
        acme.remove_domain(session, get_app(session, app), domain)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
