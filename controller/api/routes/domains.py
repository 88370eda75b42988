"""An app's custom domains: add and remove one at a time (`paas domains:add/remove`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from common import wire
from common.names import AppName, Domain
from controller.api.auth import Principal, require_app_scope
from controller.api.context import get_ctx
from controller.api.queries import get_app
from controller.api.views import app_view
from controller.context import Context
from controller.core.deploys import add_domains
from controller.core.domains import check_claimable
from controller.errors import NotFound
from controller.store.db import bump

router = APIRouter(prefix="/v1/apps", tags=["domains"], dependencies=[Depends(require_app_scope)])


@router.post("/{app}/domains", status_code=status.HTTP_201_CREATED, response_model=wire.App)
def add_domain(
    app: AppName,
    body: wire.DomainAdd,
    who: Principal = Depends(require_app_scope),
    ctx: Context = Depends(get_ctx),
) -> wire.App:
    with ctx.db.write() as session:
        row = get_app(session, app)
        check_claimable(
            [body.domain],
            cluster_domain=ctx.settings.domain,
            allowed=who.allowed_domains,
            owned={d.domain for d in row.domains},
        )
        add_domains(session, row, [body.domain])
        bump(session, desired=True)
        return app_view(row, ctx.settings)


@router.delete("/{app}/domains/{domain}", response_model=wire.App)
def remove_domain(app: AppName, domain: Domain, ctx: Context = Depends(get_ctx)) -> wire.App:
    with ctx.db.write() as session:
        row = get_app(session, app)
        found = next((d for d in row.domains if d.domain == domain), None)
        if found is None:
            raise NotFound(f"app {app} has no domain {domain}")
        row.domains.remove(found)
        session.flush()
        bump(session, desired=True)
        return app_view(row, ctx.settings)
