"""Worker processes: instances per non-web Procfile process type.

Revision ID: 0006_process_counts
Revises: 0005_operations
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_process_counts"
down_revision = "0005_operations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain string default lets SQLite add the column in place: an expression default makes
    # batch mode recreate `apps`, and dropping it would cascade to releases (foreign keys on).
    with op.batch_alter_table("apps") as batch:
        batch.add_column(
            sa.Column("process_counts", sa.JSON(), server_default="{}", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("process_counts")
