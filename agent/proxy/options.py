"""Per-app routing options as the agents render them, checked again (defence in depth):
bounded integers and real booleans only, whatever arrived."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from common.names import InvalidName
from common.wire import RouteOptions


def checked_options(raw: object) -> RouteOptions:
    if raw is None:
        return RouteOptions()
    try:
        data = raw.model_dump() if isinstance(raw, BaseModel) else raw
        return RouteOptions.model_validate(data, strict=True)
    except ValidationError as exc:
        raise InvalidName(f"invalid routing options: {exc.errors()[0].get('msg')}") from None
