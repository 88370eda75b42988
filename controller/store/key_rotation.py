"""`paas-registry rotate-key`: seal every secret at rest under a new key.

The new key goes first into the key file (the old ones stay after it, for reading) before any
row changes, so a rotation stopped half way leaves every row readable; then each sealed column
(controller/store/secretbox.py SEALED_COLUMNS) is read, opened with whichever key sealed it, and
written back under the new key, one transaction per table. A running registry finds the new
key in the file when it first meets a row sealed with it; it keeps sealing with the key it
loaded until restarted, so old keys are dropped (`--drop-old`) only with the registries stopped.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Text, select, type_coerce, update

from controller.store import schema
from controller.store.db import Database
from controller.store.secretbox import (
    SEALED_COLUMNS,
    Keyring,
    SecretBoxError,
    key_id,
    write_key_file,
)


def add_new_key(keyring: Keyring) -> str:
    """Put a new key first in the key file; returns its id."""
    if keyring.path is None:
        raise SecretBoxError(
            "the secret key comes from PAAS_SECRET_KEY: rotate with a key file"
            " (PAAS_SECRET_KEY_FILE) instead, or put the new key first in PAAS_SECRET_KEY yourself"
        )
    old = keyring.keys(reload=True)
    new = secrets.token_bytes(32)
    write_key_file(keyring.path, [new, *old])
    keyring.keys(reload=True)
    return key_id(new)


def reseal_all(db: Database) -> dict[str, int]:
    """Write every sealed value back under the keyring's current key; rows per table."""
    tables = schema.target_metadata().tables
    counts: dict[str, int] = {}
    for table_name, column_name in SEALED_COLUMNS:
        table = tables[table_name]
        column = table.c[column_name]
        with db.write() as session:
            rows = session.execute(select(table.c.id, column)).all()
            for row_id, value in rows:
                if value is not None:
                    session.execute(
                        update(table).where(table.c.id == row_id).values({column: value})
                    )
        counts[f"{table_name}.{column_name}"] = len(rows)
    return counts


def drop_old_keys(db: Database, keyring: Keyring) -> int:
    """Keep only the current key, after checking that every sealed value opens with it."""
    if keyring.path is None:
        raise SecretBoxError("the secret key comes from PAAS_SECRET_KEY: edit it yourself")
    current = keyring.current()[0]
    tables = schema.target_metadata().tables
    with db.engine.connect() as conn:
        for table_name, column_name in SEALED_COLUMNS:
            raw = select(type_coerce(tables[table_name].c[column_name], Text))  # as stored
            for (stored,) in conn.execute(raw):
                if stored is not None and f":{current}:" not in stored[:16]:
                    raise SecretBoxError(
                        f"{table_name}.{column_name} still holds a value sealed with an old key"
                        " (a registry wrote it during the rotation): rotate again, registries"
                        " stopped"
                    )
    dropped = len(keyring.keys()) - 1
    write_key_file(keyring.path, [keyring.keys()[0]])
    keyring.keys(reload=True)
    return dropped
