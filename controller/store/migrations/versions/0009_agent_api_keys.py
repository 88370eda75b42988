"""Machine agents' API keys, sealed with a key file outside the database.

Revision ID: 0009_agent_api_keys
Revises: 0008_token_domains
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_agent_api_keys"
down_revision = "0008_token_domains"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: SQLite adds it in place. Hosts joined before have none until they re-join.
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("api_key_sealed", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("api_key_sealed")
