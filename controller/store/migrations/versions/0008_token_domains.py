"""Deploy tokens carry the domain suffixes an admin allowed them to claim.

Revision ID: 0008_token_domains
Revises: 0007_release_health
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_token_domains"
down_revision = "0007_release_health"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain string default: SQLite adds the column in place (no table rebuild); existing
    # tokens allow no custom domain, the safe default.
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("domains", sa.JSON(), server_default="[]", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("domains")
