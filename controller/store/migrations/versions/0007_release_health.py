"""A release is proven before the old one goes: min_healthy_s and auto_rollback per app, the
health window and release phase output per release, crash tracking per instance.

Revision ID: 0007_release_health
Revises: 0006_process_counts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_release_health"
down_revision = "0006_process_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns or plain string defaults: SQLite adds them in place (no table rebuild).
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("min_healthy_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("auto_rollback", sa.Boolean(), nullable=True))
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("min_healthy_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("switch_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("release_output", sa.Text(), nullable=True))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("crashes", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("crashing_since", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("running_since", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("running_since")
        batch.drop_column("crashing_since")
        batch.drop_column("crashes")
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("release_output")
        batch.drop_column("switch_at")
        batch.drop_column("min_healthy_s")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("auto_rollback")
        batch.drop_column("min_healthy_s")
