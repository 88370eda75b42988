"""Host disk figures: what the agent's state folder uses, free and total;
apps that keep data (paas.toml `data = true`) and the host they are pinned to.

Revision ID: 0011_host_disk
Revises: 0010_sealed_secrets
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_host_disk"
down_revision = "0010_sealed_secrets"
branch_labels = None
depends_on = None

HOST_COLUMNS = ("state_disk_mb", "disk_free_mb", "disk_total_mb")


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        for name in HOST_COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=True))
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("keeps_data", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("data_host", sa.String(63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("data_host")
        batch.drop_column("keeps_data")
    with op.batch_alter_table("hosts") as batch:
        for name in reversed(HOST_COLUMNS):
            batch.drop_column(name)
