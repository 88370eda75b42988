"""Baseline: the registry's schema before migrations existed (what `create_all` used to make).

Databases created before alembic have exactly this schema; `controller.store.schema.upgrade` stamps
them at this revision instead of recreating their tables.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-28 02:14:50.303983
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("health_path", sa.String(length=201), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("routing_seq", sa.Integer(), nullable=True),
        sa.Column("service_port", sa.Integer(), nullable=True),
        sa.Column("depends_on", sa.JSON(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("constraints", sa.JSON(), server_default=sa.text("'{}'"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=253), nullable=False),
        sa.Column("proxy_port", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(), nullable=True),
        sa.Column("applied_index", sa.Integer(), nullable=True),
        sa.Column("proxy_error", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    revision_table = op.create_table(
        "revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("desired_seq", sa.Integer(), nullable=False),
        sa.Column("instance_seq", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # The one revision row every write locks and bumps (it used to be seeded at start).
    op.bulk_insert(revision_table, [{"id": 1, "seq": 0, "desired_seq": 0, "instance_seq": 0}])
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("host_name", sa.String(length=63), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_index(op.f("ix_tokens_host_name"), "tokens", ["host_name"], unique=False)
    op.create_table(
        "app_routing",
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("app_id"),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("chain_pem", sa.Text(), nullable=False),
        sa.Column("key_pem", sa.Text(), nullable=False),
        sa.Column("names", sa.JSON(), nullable=False),
        sa.Column("not_after", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_index(op.f("ix_certificates_app_id"), "certificates", ["app_id"], unique=False)
    op.create_table(
        "config_vars",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("secret", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app_id", "key"),
    )
    op.create_index(op.f("ix_config_vars_app_id"), "config_vars", ["app_id"], unique=False)
    op.create_table(
        "domains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("domain"),
    )
    op.create_index(op.f("ix_domains_app_id"), "domains", ["app_id"], unique=False)
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("processes", sa.JSON(), nullable=False),
        sa.Column("health_path", sa.String(length=201), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("secret_keys", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("activated_seq", sa.Integer(), nullable=True),
        sa.Column("health_timeout_s", sa.Float(), server_default=sa.text("30"), nullable=False),
        sa.Column("description", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("deadline_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app_id", "version"),
    )
    op.create_index(op.f("ix_releases_app_id"), "releases", ["app_id"], unique=False)
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("process", sa.String(length=31), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("serve", sa.Boolean(), nullable=False),
        sa.Column("desired", sa.String(length=8), nullable=False),
        sa.Column("routed", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_instances_app_id"), "instances", ["app_id"], unique=False)
    op.create_index(op.f("ix_instances_host_id"), "instances", ["host_id"], unique=False)
    op.create_index(op.f("ix_instances_release_id"), "instances", ["release_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_instances_release_id"), table_name="instances")
    op.drop_index(op.f("ix_instances_host_id"), table_name="instances")
    op.drop_index(op.f("ix_instances_app_id"), table_name="instances")
    op.drop_table("instances")
    op.drop_index(op.f("ix_releases_app_id"), table_name="releases")
    op.drop_table("releases")
    op.drop_index(op.f("ix_domains_app_id"), table_name="domains")
    op.drop_table("domains")
    op.drop_index(op.f("ix_config_vars_app_id"), table_name="config_vars")
    op.drop_table("config_vars")
    op.drop_index(op.f("ix_certificates_app_id"), table_name="certificates")
    op.drop_table("certificates")
    op.drop_table("app_routing")
    op.drop_index(op.f("ix_tokens_host_name"), table_name="tokens")
    op.drop_table("tokens")
    op.drop_table("revision")
    op.drop_table("hosts")
    op.drop_table("apps")
