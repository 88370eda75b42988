"""Alembic environment: the registry's models are the target, the connection comes from the caller.

`controller.store.schema` hands in an open connection through `config.attributes["connection"]`, so
migrations run on whatever engine the registry (or `paas-registry migrate`) already made.
`render_as_batch` lets revisions drop or alter columns on SQLite too.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.types import TypeDecorator

from controller.store.schema import target_metadata


def _render_item(kind: str, obj: Any, _autogen: Any) -> str | Literal[False]:
    """Draft revisions spell custom column types as their stored type (sa.DateTime for
    UTCDateTime), so revisions never import the models."""
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata(),
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `paas-registry migrate` (controller.store.schema)")
_run(connection)
