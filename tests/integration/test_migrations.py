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

from controller.cli import main as registry_cli
from controller.settings import RegistrySettings
from controller.store import schema, schema_head
from controller.store.db import Database, PendingMigrations
from tests.support.pg import PgServer


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


def test_the_fast_start_check_knows_the_head() -> None:
    """schema_head.HEAD lets a registry start without alembic; a new revision must move it."""
    assert schema.heads() == {schema_head.HEAD}, (
        f"set schema_head.HEAD to {sorted(schema.heads())}: registries on a database at the old"
        " head would otherwise start without migrating"
    )


def test_only_a_database_at_head_skips_alembic(engine: Engine) -> None:
    assert not schema_head.at_head(engine)  # no version table yet
    schema.upgrade(engine, "0011_host_disk")
    assert not schema_head.at_head(engine)
    schema.upgrade(engine)
    assert schema_head.at_head(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    assert not schema_head.at_head(engine)  # the full check then refuses it (test below)


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


def test_clear_secrets_of_an_old_database_are_sealed_on_upgrade(
    engine: Engine, tmp_path: Path
) -> None:
    """A database at 0009 holds config values, a release snapshot, a TLS key and the ACME
    account key in clear; after the upgrade none is left in clear and the registry reads them."""
    import json

    from tests.support.registry_app import test_registry

    schema.upgrade(engine, "0009_agent_api_keys")
    secret, key_pem = "old-clear-secret-5d1e", "-----BEGIN PRIVATE KEY-----\nOLDKEYBODY\n"
    now = "2026-01-01 00:00:00"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO apps (id, name, instances, health_path, created_at)"
                " VALUES (1, 'shop', 0, '/', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO config_vars (app_id, key, value, secret)"
                " VALUES (1, 'DB_PASSWORD', :v, true)"
            ),
            {"v": secret},
        )
        conn.execute(
            text(
                "INSERT INTO releases (app_id, version, artifact_sha256, processes, health_path,"
                " config, secret_keys, status, created_at) VALUES (1, 1, :sha, :procs, '/',"
                " :config, '[\"DB_PASSWORD\"]', 'active', :now)"
            ),
            {
                "sha": "0" * 64,
                "procs": '{"web": "x"}',
                "config": json.dumps({"DB_PASSWORD": secret}),
                "now": now,
            },
        )
        conn.execute(
            text(
                "INSERT INTO certificates (app_id, sha256, chain_pem, key_pem, names, not_after,"
                " source, created_at) VALUES (1, :sha, 'CHAIN', :key, '[]', :now, 'user', :now)"
            ),
            {"sha": "1" * 64, "key": key_pem, "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO acme_accounts (directory_url, key_pem, created_at)"
                " VALUES ('https://acme.invalid/dir', :key, :now)"
            ),
            {"key": key_pem + "ACCOUNT", "now": now},
        )
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()
    with test_registry(tmp_path / "reg", database_url=url, migrate_on_start=True) as reg:
        config = reg.client.get("/v1/apps/shop/config?reveal=true", headers=reg.admin).json()
        assert config["vars"] == {"DB_PASSWORD": secret}
        [release] = reg.client.get("/v1/apps/shop/releases", headers=reg.admin).json()
        assert release["version"] == 1
    with engine.connect() as conn:
        for table, column in (
            ("config_vars", "value"),
            ("releases", "config"),
            ("certificates", "key_pem"),
            ("acme_accounts", "key_pem"),
        ):
            stored = str(conn.execute(text(f"SELECT {column} FROM {table}")).scalar_one())
            assert "sb1:" in stored and secret not in stored and "OLDKEYBODY" not in stored
    if engine.dialect.name == "sqlite":  # nor in a freed page or the write-ahead log
        database = Path(str(engine.url.database))
        for path in (database, database.with_name(database.name + "-wal")):
            if path.exists():
                data = path.read_bytes()
                assert secret.encode() not in data and b"OLDKEYBODY" not in data, path
