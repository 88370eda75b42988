"""Per-app routing options (body size limit, timeouts, websocket, HTTPS redirect, HSTS,
maintenance): one JSON row per app, defaults when there is none.

Values are typed and bounded by `wire.RouteOptions` at the API edge; the agents render them
into their templates. The table is `AppRouting` in controller/store/models/routing.py.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from common import wire
from controller.store.models import App, AppRouting


def options_for(session: Session, app: App) -> wire.RouteOptions:
    row = session.get(AppRouting, app.id)
    return wire.RouteOptions.model_validate(row.options) if row else wire.RouteOptions()


def update_options(
    session: Session, app: App, change: wire.RouteOptionsUpdate
) -> wire.RouteOptions:
    current = options_for(session, app)
    merged = current.model_copy(update=change.model_dump(exclude_none=True))
    merged = wire.RouteOptions.model_validate(merged.model_dump())  # re-check the bounds
    row = session.get(AppRouting, app.id)
    if row is None:
        row = AppRouting(app_id=app.id)
        session.add(row)
    row.options = merged.model_dump()
    session.flush()
    return merged
