"""A registry restarted on the same state folder: deploys in flight resolve, nothing resets.

Each "restart" closes one registry app and builds a new one on the same SQLite file, as
`paas-registry serve` does after a crash (the e2e test kills the real process with -9).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from controller.store import schema, secretbox
from tests.support.clock import FakeClock
from tests.support.registry_app import test_registry

SLOW = {"Procfile": "web: python app.py\n", "paas.toml": "[app]\nhealth_timeout = 1\n"}


@pytest.mark.sqlite_only  # SQLite file
def test_deploy_keeps_its_deadline_across_a_restart(tmp_path: Path, fake_clock: FakeClock) -> None:
    with test_registry(tmp_path, deploy_timeout_s=0.2) as reg:
        token = reg.join("m1")
        reg.create_app("shop")
        [iid] = [i["id"] for i in reg.deploy("shop", SLOW)["instances"]]
        reg.report("m1", token, instances=[{"id": iid, "state": "starting", "port": 5001}])
    fake_clock.advance(0.8)
    with test_registry(tmp_path, deploy_timeout_s=0.2) as reg:
        assert reg.release("shop", 1)["status"] == "deploying"  # not failed by the restart
        fake_clock.advance(0.5)
        got = reg.release("shop", 1)  # 1.2 s after it was created, not after the restart
        assert got["status"] == "failed", got
        assert "did not become healthy within 1.2 s (stuck at starting)" in got["error"]


def test_reports_after_a_restart_finish_the_deploy(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        token = reg.join("m1")
        reg.create_app("shop")
        [iid] = [i["id"] for i in reg.deploy("shop")["instances"]]
        reg.report("m1", token, instances=[{"id": iid, "state": "starting", "port": 5001}])
        index = int(
            reg.client.get("/v1/apps/shop/releases/1", headers=reg.admin).headers["X-Paas-Index"]
        )
    with test_registry(tmp_path) as reg:
        after = reg.client.get("/v1/apps/shop/releases/1", headers=reg.admin)
        assert int(after.headers["X-Paas-Index"]) >= index  # watchers' indexes stay valid
        instances = [{"id": iid, "state": "running", "port": 5001, "routed": True}]
        reg.report("m1", token, instances=instances)  # the host token survived too
        assert reg.release("shop", 1)["status"] == "active"


@pytest.mark.sqlite_only  # SQLite file / sub-second restart timing
def test_an_older_database_is_migrated_at_start(tmp_path: Path) -> None:
    """A registry.db made before alembic (baseline schema, no alembic_version) is stamped at
    the baseline and upgraded when the embedded registry starts; its rows survive."""
    with test_registry(tmp_path) as reg:
        reg.join("m1")
        reg.create_app("shop")
        reg.deploy("shop")
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    # Going down past the sealing migration opens the secrets: it needs the registry's key.
    secretbox.attach(engine, secretbox.keyring_for(tmp_path, key=None, key_file=None))
    schema.downgrade(engine, schema.BASELINE)
    with engine.begin() as conn:  # as the pre-alembic `create_all` left it
        conn.execute(text("DROP TABLE alembic_version"))
    with test_registry(tmp_path) as reg:
        got = reg.release("shop", 1)
        assert (got["status"], got["health_timeout_s"]) == ("deploying", 30)
        with engine.connect() as conn:
            assert schema.current(conn) == schema.heads()
        with sqlite3.connect(tmp_path / "registry.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    engine.dispose()


@pytest.mark.sqlite_only  # SQLite file / sub-second restart timing
def test_partial_uploads_are_removed_at_start(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        sha = reg.upload(b"whole")
    partial = tmp_path / "artifacts" / sha[:2] / ".upload-abc123"
    partial.write_bytes(b"half of an upload cut short by kill -9")
    with test_registry(tmp_path) as reg:
        assert not partial.exists()
        assert reg.client.get(f"/v1/artifacts/{sha}", headers=reg.admin).content == b"whole"
