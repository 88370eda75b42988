"""Operations: token scopes and labels, the audit log, agent API ports.

Revision ID: 0005_operations
Revises: 0004_host_capacity
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_operations"
down_revision = "0004_host_capacity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("name", sa.String(length=63), nullable=True))
        batch.add_column(sa.Column("app_name", sa.String(length=63), nullable=True))
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("api_port", sa.Integer(), nullable=True))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("token_name", sa.String(length=63), nullable=True),
        sa.Column("scope", sa.String(length=8), nullable=True),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=True),
        sa.Column("summary", sa.String(length=300), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"])
    op.create_index(op.f("ix_audit_events_app"), "audit_events", ["app"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_events_app"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_at"), table_name="audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("api_port")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("app_name")
        batch.drop_column("name")
