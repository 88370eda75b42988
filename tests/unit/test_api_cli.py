"""`paas-registry init` (tokens printed once, refuses a second time) and settings loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli import main
from controller.settings import RegistrySettings
from tests.support.registry_app import test_registry


@pytest.mark.sqlite_only  # the embedded SQLite default
def test_init_prints_tokens_once_and_rotates(tmp_path: Path) -> None:
    runner = CliRunner()
    state = tmp_path / "state"
    first = runner.invoke(main, ["init", "--state-dir", str(state), "--json"])
    assert first.exit_code == 0, first.output
    tokens = json.loads(first.output)
    assert set(tokens) == {"admin_token", "join_token", "registry_fingerprint"}
    assert tokens["registry_fingerprint"].startswith("sha256:")  # the pin for agents and CLI
    assert tokens["admin_token"] not in (state / "registry.db").read_bytes().decode("latin-1")

    again = runner.invoke(main, ["init", "--state-dir", str(state)])
    assert again.exit_code != 0 and "already initialised" in again.output

    rotated = runner.invoke(main, ["init", "--state-dir", str(state), "--rotate"])
    assert rotated.exit_code == 0
    lines = rotated.output.splitlines()
    assert lines[0].startswith("admin token: ") and lines[1].startswith("join token: ")
    new_admin = lines[0].removeprefix("admin token: ")
    with test_registry(state) as reg:
        for token, status in [(tokens["admin_token"], 401), (new_admin, 200)]:
            response = reg.client.get("/v1/apps", headers=reg.headers(token))
            assert response.status_code == status


@pytest.mark.sqlite_only  # the embedded SQLite default
def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "registry.toml"
    config.write_text('domain = "from-file.test"\nbind_port = 9000\npublic_https_port = 8443\n')
    monkeypatch.setenv("PAAS_BIND_PORT", "9100")
    settings = RegistrySettings.load(config, state_dir=tmp_path, public_https_port=None)
    assert settings.domain == "from-file.test"
    assert settings.bind_port == 9100  # env beats the file
    assert settings.public_https_port == 8443
    assert settings.db_url == f"sqlite:///{tmp_path / 'registry.db'}"
    assert settings.app_url("hello") == "https://hello.from-file.test:8443/"
    override = RegistrySettings.load(config, bind_port=9200, domain="cli.test")
    assert (override.bind_port, override.domain) == (9200, "cli.test")
    with pytest.raises(ValueError, match="invalid domain"):
        RegistrySettings(domain="a.com;evil")
