"""`paas-registry rotate-key`: seal every secret at rest under a new key.

The new key goes first into the key file (the old ones stay after it, for reading) before any
row changes, so a rotation stopped half way leaves every row readable; then each sealed column
(controller/store/secretbox.py SEALED_COLUMNS) is read, opened with whichever key sealed it, and
written back under the new key, one transaction per table; so is each host's agent API key
(controller/store/agent_keys.py; one sealed with the legacy agent-api.key moves to the keyring).
A running registry finds the new key in the file when it first meets a row sealed with it; it
keeps sealing with the key it loaded until restarted, so old keys are dropped (`--drop-old`)
only with the registries stopped.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from sqlalchemy import Text, select, type_coerce, update

from controller.store import agent_keys, schema
from controller.store.db import Database
from controller.store.secretbox import (
    SEALED_COLUMNS,
    Keyring,
    SecretBoxError,
    key_id,
    keyring_of,
    write_key_file,
)

log = logging.getLogger(__name__)
HOST_KEYS = "hosts.api_key_sealed"


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


def reseal_all(db: Database, *, state_dir: Path) -> dict[str, int]:
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
    counts[HOST_KEYS] = _reseal_host_keys(db, state_dir)
    return counts


def _reseal_host_keys(db: Database, state_dir: Path) -> int:
    """Each host's agent API key under the current key; one that does not open (its legacy
    key file is gone) stays as it is: that host needs a re-join either way."""
    keyring = keyring_of(db.engine)
    hosts = schema.target_metadata().tables["hosts"]
    done = 0
    with db.write() as session:
        rows = session.execute(
            select(hosts.c.id, hosts.c.name, hosts.c.api_key_sealed).where(
                hosts.c.api_key_sealed.is_not(None)
            )
        ).all()
        for row_id, name, sealed in rows:
            try:
                key = agent_keys.unseal(keyring, name, sealed, state_dir=state_dir)
            except agent_keys.SealError as exc:
                log.warning("kept the agent API key of host %s as it is: %s", name, exc)
                continue
            fresh = agent_keys.seal(keyring, name, key)
            session.execute(update(hosts).where(hosts.c.id == row_id).values(api_key_sealed=fresh))
            done += 1
    return done


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
        host_keys = select(tables["hosts"].c.api_key_sealed)
        for (sealed,) in conn.execute(host_keys):
            kid = agent_keys.sealed_with(sealed) if sealed is not None else None
            if kid is not None and kid != current:
                raise SecretBoxError(
                    f"{HOST_KEYS} still holds a key sealed with an old key (a host joined during"
                    " the rotation): rotate again, registries stopped"
                )
    dropped = len(keyring.keys()) - 1
    write_key_file(keyring.path, [keyring.keys()[0]])
    keyring.keys(reload=True)
    return dropped
