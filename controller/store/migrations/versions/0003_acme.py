"""ACME: the registry's account keys, the domains that get certificates by ACME,
and the http-01 answers published to the frontends.

Revision ID: 0003_acme
Revises: 0002_artifact_chunks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_acme"
down_revision = "0002_artifact_chunks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("directory_url", sa.String(length=2000), nullable=False),
        sa.Column("key_pem", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("directory_url"),
    )
    op.create_table(
        "acme_domains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("cert_sha256", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("domain"),
    )
    op.create_index(op.f("ix_acme_domains_app_id"), "acme_domains", ["app_id"], unique=False)
    op.create_table(
        "acme_challenges",
        sa.Column("token", sa.String(length=128), nullable=False),
        sa.Column("key_authorization", sa.String(length=200), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token"),
    )


def downgrade() -> None:
    op.drop_table("acme_challenges")
    op.drop_index(op.f("ix_acme_domains_app_id"), table_name="acme_domains")
    op.drop_table("acme_domains")
    op.drop_table("acme_accounts")
