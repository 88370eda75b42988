"""`paas-registry backup` / `restore`: a round trip through the portable file, on SQLite and on
PostgreSQL and across them, sealed with the registry's key (its key file copied to the target)
or a passphrase; restore refuses a non-empty database unless --force. What a backup must not
hold in clear, and wrong keys: tests/integration/test_secrets_at_rest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli import main as registry_cli
from tests.support.pg import PgServer
from tests.support.registry_app import sha256_of, test_registry


def _url(kind: str, tmp_path: Path, name: str, request: pytest.FixtureRequest) -> str | None:
    if kind == "sqlite":
        return None  # the embedded default in the state dir
    server: PgServer = request.getfixturevalue("postgres")
    return server.new_database(name)


def _args(state: Path, url: str | None) -> list[str]:
    return ["--state-dir", str(state), *(["--database-url", url] if url else [])]


@pytest.mark.parametrize(
    ("source", "target", "seal"),
    [
        ("sqlite", "sqlite", "key"),
        ("postgres", "postgres", "passphrase"),
        ("sqlite", "postgres", "key"),
    ],
)
def test_round_trip(
    source: str, target: str, seal: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    src_url = _url(source, tmp_path, "src", request)
    dst_url = _url(target, tmp_path, "dst", request)
    files = {"Procfile": "web: python app.py\n", "app.py": "print('hi')\n"}
    overrides = {"database_url": src_url, "migrate_on_start": True} if src_url else {}
    with test_registry(tmp_path / "src", **overrides) as reg:
        reg.create_app("hello", domains=["hello.example.com"])
        release = reg.deploy("hello", files)
        host_token = reg.join("m1")
        config = {"set": {"DB_PASSWORD": "s3cr3t-round-trip"}}
        assert reg.client.patch("/v1/apps/hello/config", json=config, headers=reg.admin).is_success
        before_apps = reg.client.get("/v1/apps", headers=reg.admin).json()
        before_releases = reg.client.get("/v1/apps/hello/releases", headers=reg.admin).json()
        admin = reg.admin_token

    dump = tmp_path / "registry-backup.tar.gz"
    runner = CliRunner()
    sealing: list[str] = []
    if seal == "passphrase":
        (tmp_path / "pass").write_text("correct horse battery staple\n")
        sealing = ["--passphrase-file", str(tmp_path / "pass")]
    else:  # the target registry gets the source's key file, as when a registry moves
        (tmp_path / "dst").mkdir()
        shutil.copy2(tmp_path / "src" / "secret.key", tmp_path / "dst" / "secret.key")
    made = runner.invoke(
        registry_cli, ["backup", str(dump), *sealing, *_args(tmp_path / "src", src_url)]
    )
    assert made.exit_code == 0, made.output
    assert "artifact(s)" in made.output and dump.is_file()
    assert dump.stat().st_mode & 0o777 == 0o600  # every token hash and secret is in it

    restored = runner.invoke(
        registry_cli, ["restore", str(dump), *sealing, *_args(tmp_path / "dst", dst_url)]
    )
    assert restored.exit_code == 0, restored.output

    overrides = {"database_url": dst_url, "migrate_on_start": True} if dst_url else {}
    with test_registry(tmp_path / "dst", **overrides) as reg:
        headers = {"Authorization": f"Bearer {admin}"}  # the old tokens still work
        assert reg.client.get("/v1/apps", headers=headers).json() == before_apps
        got = reg.client.get("/v1/apps/hello/releases", headers=headers).json()
        assert got == before_releases
        config = reg.client.get("/v1/apps/hello/config?reveal=true", headers=headers).json()
        assert config["vars"]["DB_PASSWORD"] == "s3cr3t-round-trip"  # sealed with the target's key
        body = reg.client.get(f"/v1/artifacts/{release['artifact_sha256']}", headers=headers)
        assert body.status_code == 200 and sha256_of(body.content) == release["artifact_sha256"]
        desired = reg.client.get("/v1/hosts/m1/desired", headers=reg.headers(host_token))
        assert desired.status_code == 200, desired.text
        # new rows get fresh ids after the restored ones (sequences moved on PostgreSQL)
        reg.create_app("second")
        assert reg.deploy("second")["version"] == 1

    again = runner.invoke(
        registry_cli, ["restore", str(dump), *sealing, *_args(tmp_path / "dst", dst_url)]
    )
    assert again.exit_code != 0 and "not empty" in again.output
    forced = runner.invoke(
        registry_cli,
        ["restore", str(dump), "--force", *sealing, *_args(tmp_path / "dst", dst_url)],
    )
    assert forced.exit_code == 0, forced.output
    with test_registry(tmp_path / "dst", **overrides) as reg:
        names = [a["name"] for a in reg.client.get("/v1/apps", headers=reg.admin).json()]
        assert names == ["hello"]


def test_restore_refuses_a_file_that_is_not_a_backup(tmp_path: Path) -> None:
    bogus = tmp_path / "x.tar.gz"
    bogus.write_bytes(b"not a tar")
    result = CliRunner().invoke(
        registry_cli, ["restore", str(bogus), "--state-dir", str(tmp_path / "s")]
    )
    assert result.exit_code != 0 and "not a registry backup" in result.output


def test_backup_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    import os

    with test_registry(tmp_path / "src") as reg:
        reg.create_app("hello")
    dump = tmp_path / "out" / "backup.tar.gz"
    old = os.umask(0o022)
    try:
        made = CliRunner().invoke(
            registry_cli, ["backup", str(dump), *_args(tmp_path / "src", None)]
        )
    finally:
        os.umask(old)
    assert made.exit_code == 0, made.output
    assert dump.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in dump.parent.iterdir()] == ["backup.tar.gz"]  # no partial file left
