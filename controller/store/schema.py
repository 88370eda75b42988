"""The schema is owned by the alembic revisions in controller/store/migrations/versions.

`upgrade` brings a database to head (`paas-registry migrate`); `pending` says what a database
still lacks, so the registry can refuse to start on it; `differences` compares the head schema
with the models (the test that catches a column added to a model without a revision).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, MetaData, inspect, text
from sqlalchemy.engine import Engine

from controller.store.schema_head import SchemaTooNew

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BASELINE = "0001_baseline"
MIGRATION_LOCK = 0x70AA6  # pg_advisory_xact_lock key held while migrating


def target_metadata() -> MetaData:
    """Every table of the registry (importing the models package registers each one)."""
    from controller.store.models import Base

    return Base.metadata


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s")
    config.attributes["connection"] = connection
    return config


def heads() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())


def pending(engine: Engine) -> list[str]:
    """Revisions not yet applied, oldest first (empty when the database is at head)."""
    script = ScriptDirectory.from_config(alembic_config())
    with engine.connect() as conn:
        have = current(conn)
        unversioned = not have and _has_registry_tables(conn)
    if unversioned:
        have = {BASELINE}
    unknown = sorted(rev for rev in have if not _known(script, rev))
    if unknown:
        raise SchemaTooNew(
            f"the registry database is at schema revision {', '.join(unknown)}, which this"
            " registry does not know: it was migrated by a newer version; run that version"
        )
    missing = [
        rev.revision
        for rev in script.walk_revisions()
        if rev.revision not in have and not _is_ancestor(script, rev.revision, have)
    ]
    return list(reversed(missing))


def pending_from_empty() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def upgrade(engine: Engine, target: str = "heads") -> None:
    """Apply the missing revisions. A database made by the pre-alembic `create_all` has the
    baseline schema exactly, so it is stamped at the baseline first instead of recreated."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # replicas starting together migrate one by one
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config = alembic_config(conn)
        if not current(conn) and _has_registry_tables(conn):
            command.stamp(config, BASELINE)
        command.upgrade(config, target)
    if engine.dialect.name == "sqlite":
        _checkpoint(engine)


def _checkpoint(engine: Engine) -> None:
    """Copy the write-ahead log into the database file now. A revision that seals clear values
    overwrites their cells (secure_delete), but in WAL mode the file keeps the old pages until
    a checkpoint, which otherwise waits for the last connection to close."""
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def downgrade(engine: Engine, target: str) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), target)


def differences(engine: Engine) -> list[Any]:
    """What the database's schema lacks or has beyond the models (alembic's autogenerate diff)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, target_metadata()))


def describe(diffs: list[Any]) -> list[str]:
    """One short line per difference: `add_table acme_orders`, `add_column tokens.name`."""
    lines: list[str] = []
    for diff in diffs:
        if isinstance(diff, list):  # column modifications come grouped
            lines.extend(f"{d[0]} {d[2]}.{d[3]}" for d in diff)
        elif diff[0] in ("add_table", "remove_table"):
            lines.append(f"{diff[0]} {diff[1].name}")
        elif diff[0] in ("add_column", "remove_column"):
            lines.append(f"{diff[0]} {diff[2]}.{diff[3].name}")
        else:
            lines.append(f"{diff[0]} {getattr(diff[1], 'name', diff[1])}")
    return lines


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def _has_registry_tables(conn: Connection) -> bool:
    return inspect(conn).has_table("revision")


def _is_ancestor(script: ScriptDirectory, revision: str, have: set[str]) -> bool:
    """True when `revision` is already applied because one of `have` builds on it."""
    for head in have:
        for rev in script.iterate_revisions(head, "base"):
            if rev is not None and rev.revision == revision:
                return True
    return False


def draft_revision(message: str) -> None:
    """Write an autogenerated draft revision (head -> the models) for a developer to review."""
    import re
    import tempfile

    from sqlalchemy import create_engine

    script = ScriptDirectory.from_config(alembic_config())
    taken = [
        int(match.group(1))
        for path in Path(script.versions).glob("*.py")
        if (match := re.match(r"(\d{4})_", path.name))
    ]
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:27].rstrip("_") or "change"
    rev_id = f"{max(taken, default=0) + 1:04d}_{slug}"
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/draft.db")
        upgrade(engine)
        with engine.begin() as conn:
            command.revision(
                alembic_config(conn), message=message, autogenerate=True, rev_id=rev_id
            )
        engine.dispose()


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "revision":
        sys.exit('usage: python -m controller.store.schema revision "what changed"')
    draft_revision(sys.argv[2])
