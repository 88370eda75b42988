"""Per-app health check settings: paas.toml [app] health_check_timeout and
health_threshold; NULL means the defaults (5 s, 3 checks).

Revision ID: 0012_health_checks
Revises: 0011_host_disk
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_health_checks"
down_revision = "0011_host_disk"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("health_check_timeout_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("health_threshold", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("health_threshold")
        batch.drop_column("health_check_timeout_s")
