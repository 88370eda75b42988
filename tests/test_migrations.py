"""The alembic revisions are the schema: one head, and upgrading an empty database gives exactly
the models' tables and columns (a model change without a revision fails here), on SQLite and on
PostgreSQL; downgrade to nothing and up again works; a registry refuses pending revisions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from controller import schema
from controller.cli import main as registry_cli
from controller.db import Database, PendingMigrations
from controller.settings import RegistrySettings
from tests.pg import PgServer


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
    else:
        server: PgServer = request.getfixturevalue("postgres")
        url = server.new_database("mig")
    made = create_engine(url)
    yield made
    made.dispose()


def test_single_head() -> None:
    heads = schema.heads()
    assert len(heads) == 1, (
        f"several alembic heads {sorted(heads)}: set one revision's down_revision to the other"
        " (see /work/briefs/s2/migrations.md)"
    )


def test_revision_ids_fit_alembic_version() -> None:
    """alembic_version.version_num is VARCHAR(32): PostgreSQL refuses longer ids."""
    too_long = [rev for rev in schema.pending_from_empty() if len(rev) > 32]
    assert not too_long, f"revision ids longer than 32 characters: {too_long}"


def test_upgrade_from_empty_gives_the_models_schema(engine: Engine) -> None:
    assert schema.pending(engine) == schema.pending_from_empty()
    schema.upgrade(engine)
    missing = schema.describe(schema.differences(engine))
    assert not missing, "model changes without an alembic revision: " + "; ".join(missing)
    assert schema.pending(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT seq, desired_seq FROM revision WHERE id = 1")).one() == (
            0,
            0,
        )


def test_downgrade_to_base_and_up_again(engine: Engine) -> None:
    schema.upgrade(engine)
    schema.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    schema.upgrade(engine)
    assert schema.differences(engine) == []


def test_pre_alembic_database_is_stamped_at_the_baseline(tmp_path: Path) -> None:
    """A registry.db made by the old `create_all` (baseline schema, no alembic_version)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    schema.upgrade(engine, schema.BASELINE)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("UPDATE revision SET seq = 41"))
    assert schema.pending(engine)[0] != schema.BASELINE
    schema.upgrade(engine)
    assert schema.differences(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT seq FROM revision")).scalar_one() == 41
    engine.dispose()


def test_registry_refuses_pending_revisions_unless_embedded(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    db = Database(url)
    with pytest.raises(PendingMigrations, match="paas-registry migrate"):
        db.prepare(migrate=False)
    db.dispose()
    assert RegistrySettings(database_url=url).migrates_on_start is False
    assert RegistrySettings().migrates_on_start is True
    assert RegistrySettings(database_url=url, migrate_on_start=True).migrates_on_start is True

    refused = CliRunner().invoke(registry_cli, ["init", "--database-url", url])
    assert refused.exit_code != 0 and "paas-registry migrate" in refused.output
    not_served = CliRunner().invoke(registry_cli, ["serve", "--database-url", url, "--port", "0"])
    assert not_served.exit_code != 0 and "paas-registry migrate" in not_served.output
    done = CliRunner().invoke(registry_cli, ["migrate", "--database-url", url])
    assert done.exit_code == 0, done.output
    assert "applied" in done.output
    again = CliRunner().invoke(registry_cli, ["migrate", "--database-url", url])
    assert "up to date" in again.output
    db = Database(url)
    db.prepare(migrate=False)
    db.dispose()


def test_a_database_from_a_newer_registry_is_refused(engine: Engine) -> None:
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    url = engine.url.render_as_string(hide_password=False)
    db = Database(url)
    with pytest.raises(schema.SchemaTooNew, match="newer version"):
        db.prepare(migrate=True)
    db.dispose()
    refused = CliRunner().invoke(registry_cli, ["migrate", "--database-url", url])
    assert refused.exit_code != 0 and "9999_future" in refused.output
