"""Config values, release config snapshots and TLS private keys sealed at rest.

Seals every clear value with the registry's keyring (controller/store/secretbox.py), which the
caller attaches to the engine; the column types do not change, so no table is rebuilt.

Revision ID: 0010_sealed_secrets
Revises: 0009_agent_api_keys
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

from controller.store import secretbox

revision = "0010_sealed_secrets"
down_revision = "0009_agent_api_keys"
branch_labels = None
depends_on = None

# (table, column, JSON?) as the models had them before this revision.
COLUMNS = (
    ("config_vars", "value", False),
    ("releases", "config", True),
    ("certificates", "key_pem", False),
    ("acme_accounts", "key_pem", False),
)


def _table(name: str, column: str, is_json: bool) -> sa.TableClause:
    return sa.table(
        name, sa.column("id", sa.Integer), sa.column(column, sa.JSON if is_json else sa.Text)
    )


def _opens(keyring: secretbox.Keyring, stored: Any, purpose: str) -> bool:
    if not isinstance(stored, str) or not secretbox.is_sealed(stored):
        return False
    try:
        keyring.open(stored, purpose)
    except secretbox.SecretBoxError:
        return False  # a clear value that merely looks sealed
    return True


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":  # overwrite the clear cells freed by the updates
        bind.exec_driver_sql("PRAGMA secure_delete = ON")
    for name, column, is_json in COLUMNS:
        table = _table(name, column, is_json)
        purpose = f"{name}.{column}"
        rows = bind.execute(sa.select(table.c.id, table.c[column])).all()
        if not rows:
            continue
        keyring = secretbox.keyring_of(bind)  # only asked for when there is something to seal
        for row_id, stored in rows:
            if stored is None or _opens(keyring, stored, purpose):
                continue
            clear = json.dumps(stored) if is_json else stored
            bind.execute(
                table.update()
                .where(table.c.id == row_id)
                .values({column: keyring.seal(clear, purpose)})
            )


def downgrade() -> None:
    bind = op.get_bind()
    for name, column, is_json in COLUMNS:
        table = _table(name, column, is_json)
        purpose = f"{name}.{column}"
        rows = bind.execute(sa.select(table.c.id, table.c[column])).all()
        if not rows:
            continue
        keyring = secretbox.keyring_of(bind)
        for row_id, stored in rows:
            if not _opens(keyring, stored, purpose):
                continue
            clear = keyring.open(stored, purpose)
            bind.execute(
                table.update()
                .where(table.c.id == row_id)
                .values({column: json.loads(clear) if is_json else clear})
            )
