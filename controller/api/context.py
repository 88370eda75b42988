"""The registry's Context (controller/context.py) as a FastAPI dependency of every route."""

from __future__ import annotations

from fastapi import Request

from controller.context import Context


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx
