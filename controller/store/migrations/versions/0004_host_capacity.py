"""Host capacity and per-app memory: what a host can run, what an app needs.

Revision ID: 0004_host_capacity
Revises: 0003_acme
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_host_capacity"
down_revision = "0003_acme"
branch_labels = None
depends_on = None

HOST_COLUMNS = ("cpu_count", "memory_total_mb", "memory_available_mb")


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        for name in HOST_COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))
        batch.add_column(sa.Column("load_1m", sa.Float(), nullable=True))
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("memory_mb", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("memory_mb")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("load_1m")
        for name in reversed(HOST_COLUMNS):
            batch.drop_column(name)
