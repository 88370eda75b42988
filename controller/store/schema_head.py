"""The schema revision this code runs on, known without loading alembic.

Every registry start checks its database's revision. Loading alembic and reading every
revision script for that is about a tenth of a start, and all but the first start after an
upgrade find the database at head: one `SELECT` of alembic's own version row says so.
Anything else (an empty, older, newer or unversioned database) goes to controller/store/schema.py.
tests/integration/test_migrations.py keeps HEAD equal to alembic's head.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

HEAD = "0012_health_checks"


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer registry; an older one must not write to it."""


def at_head(engine: Engine) -> bool:
    """True when the database records exactly HEAD as its revision."""
    try:
        with engine.connect() as conn:
            have = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DBAPIError:  # no version table yet, or no database: the full check tells which
        return False
    return list(have) == [HEAD]
