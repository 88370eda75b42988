"""An app's routing options: `paas routing APP`, `paas routing:set APP key=value ...`."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends

from common import wire
from common.names import AppName
from controller.api.auth import require_app_scope
from controller.api.context import get_ctx
from controller.api.queries import get_app
from controller.context import Context
from controller.core.route_options import options_for, update_options
from controller.store.db import bump

log = logging.getLogger("paas.registry")
router = APIRouter(prefix="/v1/apps", tags=["routing"], dependencies=[Depends(require_app_scope)])


@router.get("/{app}/routing", response_model=wire.RouteOptions)
def read_routing_options(app: AppName, ctx: Context = Depends(get_ctx)) -> wire.RouteOptions:
    with ctx.db.read() as session:
        return options_for(session, get_app(session, app))


@router.patch("/{app}/routing", response_model=wire.RouteOptions)
def update_routing_options(
    app: AppName, body: wire.RouteOptionsUpdate, ctx: Context = Depends(get_ctx)
) -> wire.RouteOptions:
    with ctx.db.write() as session:
        options = update_options(session, get_app(session, app), body)
        bump(session, desired=True)
    log.info("routing options of %s: %s", app, options.model_dump())
    return options
