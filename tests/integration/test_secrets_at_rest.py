"""Issue 14, secrets at rest: config values, TLS private keys and the ACME account key are sealed
in the database (SQLite file bytes, PostgreSQL rows) while the API, the desired state and the
routing table still hand out the plain values; a backup is 0600 and sealed; restore with the
wrong key or passphrase refuses and changes nothing; rotate-key keeps everything readable."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.agent_auth import api_key
from controller.acme.service import AcmeRunner
from controller.cli import main as registry_cli
from controller.store import secretbox
from controller.store.agent_keys import unseal
from controller.store.backup_seal import CHUNK
from tests.support.certgen import chain
from tests.support.pg import PgServer
from tests.support.registry_app import TestRegistry, test_registry

SECRET = "hunter2-s3cret-VALUE-7f3a"
PLAIN = "plain-config-value-91c2"  # every value is sealed, not only those marked secret
ACME_DIRECTORY = "https://acme.invalid/directory"


def _key_body(pem: str) -> str:
    """A line from the middle of a PEM key: what a leak of the key would contain."""
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return lines[len(lines) // 2]


class Secrets:
    def __init__(self, reg: TestRegistry) -> None:
        _, mid, leaf = chain(["shop.example.com"])
        reg.create_app("shop", domains=["shop.example.com"])
        body = {"set": {"DB_PASSWORD": SECRET, "GREETING": PLAIN}}
        assert reg.client.patch("/v1/apps/shop/config", json=body, headers=reg.admin).is_success
        cert = {"cert_pem": leaf.cert_pem + mid.cert_pem, "key_pem": leaf.key_pem}
        added = reg.client.post("/v1/apps/shop/certs", json=cert, headers=reg.admin)
        assert added.status_code == 201, added.text
        self.host_token = reg.join("m1")
        reg.deploy("shop")
        account_pem = AcmeRunner(reg.client.app.state.ctx)._account_key(ACME_DIRECTORY)
        self.needles = {
            "config secret": SECRET.encode(),
            "config value": PLAIN.encode(),
            "TLS key": _key_body(leaf.key_pem).encode(),
            "ACME account key": _key_body(account_pem).encode(),
            "any private key": b"PRIVATE KEY",
        }
        self.key_pem = leaf.key_pem
        self.account_pem = account_pem

    def assert_absent(self, data: bytes, where: str) -> None:
        found = [name for name, needle in self.needles.items() if needle in data]
        assert not found, f"{where} holds in clear: {found}"


def assert_plain_through_the_api(reg: TestRegistry, secrets: Secrets) -> None:
    revealed = reg.client.get("/v1/apps/shop/config?reveal=true", headers=reg.admin).json()
    assert revealed["vars"] == {"DB_PASSWORD": SECRET, "GREETING": PLAIN}
    desired = reg.desired("m1", secrets.host_token)
    assert SECRET in str(desired) and PLAIN in str(desired)  # agents need the plain values
    routing = reg.client.get("/v1/routing", headers=reg.admin).json()
    assert [c["pem"].endswith(secrets.key_pem) for c in routing["certs"]] == [True]
    runner = AcmeRunner(reg.client.app.state.ctx)
    assert runner._account_key(ACME_DIRECTORY) == secrets.account_pem


def sqlite_bytes(state: Path) -> bytes:
    """The database file and its WAL, where fresh commits sit until a checkpoint."""
    return b"".join(
        (state / f"registry.db{suffix}").read_bytes()
        for suffix in ("", "-wal")
        if (state / f"registry.db{suffix}").exists()
    )


def postgres_bytes(url: str) -> bytes:
    """Every row of every table, as PostgreSQL stores and hands it out."""
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        ]
        rows = [
            str(row[0]).encode()
            for table in tables
            for row in conn.execute(f'SELECT t::text FROM "{table}" t').fetchall()
        ]
    assert any(b"sb1:" in row for row in rows)  # the sealed values are there
    return b"\n".join(rows)


@pytest.fixture
def sqlite_reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path / "reg", domain="paas.test") as reg:
        yield reg


def test_sqlite_file_holds_no_secret_and_the_api_the_plain_values(
    sqlite_reg: TestRegistry, tmp_path: Path
) -> None:
    secrets = Secrets(sqlite_reg)
    assert_plain_through_the_api(sqlite_reg, secrets)
    secrets.assert_absent(sqlite_bytes(tmp_path / "reg"), "registry.db")
    key_file = tmp_path / "reg" / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_postgres_rows_hold_no_secret(postgres: PgServer, tmp_path: Path) -> None:
    url = postgres.new_database("atrest")
    with test_registry(tmp_path / "reg", database_url=url, migrate_on_start=True) as reg:
        secrets = Secrets(reg)
        assert_plain_through_the_api(reg, secrets)
    secrets.assert_absent(postgres_bytes(url), "the PostgreSQL database")


def test_a_registry_with_another_key_refuses_to_start(tmp_path: Path) -> None:
    with test_registry(tmp_path / "reg", domain="paas.test") as reg:
        Secrets(reg)
    (tmp_path / "other.key").write_text(secretbox.new_key_line() + "\n")
    with (
        pytest.raises(secretbox.SecretBoxError, match=r"not in .*other\.key"),
        test_registry(tmp_path / "reg", secret_key_file=tmp_path / "other.key"),
    ):
        pass


def test_a_sealed_value_cannot_move_to_another_column() -> None:
    ring = secretbox.Keyring(text=secretbox.new_key_line())
    sealed = ring.seal(SECRET, "config_vars.value")
    assert ring.open(sealed, "config_vars.value") == SECRET
    with pytest.raises(secretbox.SecretBoxError, match="damaged or was moved"):
        ring.open(sealed, "certificates.key_pem")
    with pytest.raises(secretbox.SecretBoxError, match="not sealed"):
        ring.open(SECRET, "config_vars.value")


def _cli(*argv: str) -> str:
    result = CliRunner().invoke(registry_cli, list(argv))
    assert result.exit_code == 0, result.output
    return result.output


def _refused(*argv: str) -> str:
    result = CliRunner().invoke(registry_cli, list(argv))
    assert result.exit_code != 0, result.output
    return result.output


def test_backup_is_0600_and_sealed_and_wrong_keys_change_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with test_registry(src, domain="paas.test") as reg:
        secrets = Secrets(reg)
        admin_hash = hashlib.sha256(reg.admin_token.encode()).hexdigest().encode()
    in_db_only = {"admin token hash": admin_hash, "a table name": b"config_vars"}
    secrets.needles |= in_db_only  # a backup is sealed whole: not even these show
    (tmp_path / "pass").write_text("correct horse battery staple\n")
    (tmp_path / "wrong").write_text("incorrect horse\n")

    by_key, by_pass = tmp_path / "key.backup", tmp_path / "pass.backup"
    old = os.umask(0o022)
    try:
        _cli("backup", str(by_key), "--state-dir", str(src))
        _cli(
            "backup",
            str(by_pass),
            "--passphrase-file",
            str(tmp_path / "pass"),
            "--state-dir",
            str(src),
        )
    finally:
        os.umask(old)
    for dump in (by_key, by_pass):
        assert dump.stat().st_mode & 0o777 == 0o600
        secrets.assert_absent(dump.read_bytes(), dump.name)

    # The target: a registry with data of its own and its own key.
    with test_registry(dst) as target:
        target.create_app("mine")
        body = {"set": {"MINE": "target-value"}}
        assert target.client.patch(
            "/v1/apps/mine/config", json=body, headers=target.admin
        ).is_success
    before = sqlite_bytes(dst)

    def unchanged() -> None:
        assert sqlite_bytes(dst) == before
        with test_registry(dst) as target:
            assert [
                a["name"] for a in target.client.get("/v1/apps", headers=target.admin).json()
            ] == ["mine"]

    args = ["--state-dir", str(dst), "--force"]
    out = _refused("restore", str(by_pass), "--passphrase-file", str(tmp_path / "wrong"), *args)
    assert "passphrase given does not open this backup" in out
    out = _refused("restore", str(by_pass), *args)
    assert "sealed with a passphrase" in out
    out = _refused("restore", str(by_key), *args)  # the target's key is another one
    assert "not in" in out and "secret.key" in out
    damaged = tmp_path / "damaged.backup"
    data = bytearray(by_pass.read_bytes())
    data[-5] ^= 1
    damaged.write_bytes(bytes(data))
    out = _refused("restore", str(damaged), "--passphrase-file", str(tmp_path / "pass"), *args)
    assert "damaged" in out or "does not open" in out
    truncated = tmp_path / "truncated.backup"
    truncated.write_bytes(by_pass.read_bytes()[: -(len(data) // 3)])
    out = _refused("restore", str(truncated), "--passphrase-file", str(tmp_path / "pass"), *args)
    assert "truncated" in out
    unchanged()

    _cli("restore", str(by_pass), "--passphrase-file", str(tmp_path / "pass"), *args)
    with test_registry(dst, domain="paas.test") as target:
        assert_plain_through_the_api(target, secrets)
    for name in in_db_only:  # the database holds these (hashes, not credentials: see docs)
        del secrets.needles[name]
    secrets.assert_absent(sqlite_bytes(dst), "the restored registry.db")


def test_backup_chunks_cover_artifacts_larger_than_one_chunk(tmp_path: Path) -> None:
    big = base64.b64encode(os.urandom(CHUNK * 2)).decode()  # incompressible: several chunks
    with test_registry(tmp_path / "src") as reg:
        reg.create_app("big", instances=0)
        release = reg.deploy("big", {"Procfile": "web: x\n", "blob.txt": big})
    _cli("backup", str(tmp_path / "b"), "--state-dir", str(tmp_path / "src"))
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "secret.key").write_bytes((tmp_path / "src" / "secret.key").read_bytes())
    _cli("restore", str(tmp_path / "b"), "--state-dir", str(tmp_path / "dst"))
    with test_registry(tmp_path / "dst") as reg:
        got = reg.client.get(f"/v1/artifacts/{release['artifact_sha256']}", headers=reg.admin)
        assert (
            got.status_code == 200
            and hashlib.sha256(got.content).hexdigest() == release["artifact_sha256"]
        )


def test_rotate_key_then_everything_still_reads(tmp_path: Path) -> None:
    state = tmp_path / "reg"
    with test_registry(state, domain="paas.test") as reg:
        secrets = Secrets(reg)
    old_kid = secretbox.key_id(secretbox.parse_keys((state / "secret.key").read_text(), "f")[0])
    assert f"sb1:{old_kid}:".encode() in sqlite_bytes(state)

    assert _host_key(state).startswith(f"ak2:{old_kid}:")  # the one keyring seals it too
    assert not (state / "agent-api.key").exists()

    out = _cli("rotate-key", "--state-dir", str(state))
    keys = secretbox.parse_keys((state / "secret.key").read_text(), "f")
    new_kid = secretbox.key_id(keys[0])
    assert len(keys) == 2 and new_kid != old_kid and new_kid in out
    assert (state / "secret.key").stat().st_mode & 0o777 == 0o600
    assert _host_key(state).startswith(f"ak2:{new_kid}:")
    with test_registry(state, domain="paas.test") as reg:
        assert_plain_through_the_api(reg, secrets)

    _cli("rotate-key", "--state-dir", str(state), "--drop-old")
    keys = secretbox.parse_keys((state / "secret.key").read_text(), "f")
    assert len(keys) == 1 and secretbox.key_id(keys[0]) not in (old_kid, new_kid)
    keyring = secretbox.Keyring(path=state / "secret.key")
    assert unseal(keyring, "m1", _host_key(state), state_dir=state) == api_key(secrets.host_token)
    with test_registry(state, domain="paas.test") as reg:
        assert_plain_through_the_api(reg, secrets)
    secrets.assert_absent(sqlite_bytes(state), "registry.db after rotation")


def test_a_host_key_sealed_with_the_legacy_key_file_moves_to_the_keyring_on_rotation(
    tmp_path: Path,
) -> None:
    """An installation from before the one keyring: its agent-api.key is still read, and
    rotate-key reseals the host's key under the keyring."""
    state = tmp_path / "reg"
    with test_registry(state, domain="paas.test") as reg:
        host_token = reg.join("m1")
    master = os.urandom(32)
    (state / "agent-api.key").write_bytes(master)
    nonce = os.urandom(12)
    legacy = AESGCM(master).encrypt(nonce, api_key(host_token), b"m1")
    with contextlib.closing(sqlite3.connect(state / "registry.db")) as db:
        value = base64.b64encode(nonce + legacy).decode()
        db.execute("UPDATE hosts SET api_key_sealed = ? WHERE name = 'm1'", (value,))
        db.commit()
    keyring = secretbox.Keyring(path=state / "secret.key")
    assert unseal(keyring, "m1", _host_key(state), state_dir=state) == api_key(host_token)

    _cli("rotate-key", "--state-dir", str(state))
    kid = secretbox.key_id(keyring.keys(reload=True)[0])
    assert _host_key(state).startswith(f"ak2:{kid}:")
    (state / "agent-api.key").unlink()  # no longer needed
    assert unseal(keyring, "m1", _host_key(state), state_dir=state) == api_key(host_token)


def _host_key(state: Path) -> str:
    with contextlib.closing(sqlite3.connect(state / "registry.db")) as db:
        return str(db.execute("SELECT api_key_sealed FROM hosts WHERE name = 'm1'").fetchone()[0])


def test_rotate_key_refused_with_the_key_in_the_environment(tmp_path: Path) -> None:
    runner = CliRunner(env={"PAAS_SECRET_KEY": secretbox.new_key_line()})
    result = runner.invoke(registry_cli, ["rotate-key", "--state-dir", str(tmp_path / "reg")])
    assert result.exit_code != 0 and "PAAS_SECRET_KEY" in result.output
