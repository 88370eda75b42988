"""common/settings.py: one chain for the registry's and the agents' settings, defaults < TOML
file < PAAS_* environment < explicit overrides (None: not given), the same for both."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import AgentSettings, load_settings
from controller.settings import RegistrySettings


def test_registry_file_may_keep_its_values_under_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAAS_DOMAIN", raising=False)
    nested = tmp_path / "nested.toml"
    nested.write_text('[registry]\ndomain = "nested.test"\n')
    flat = tmp_path / "flat.toml"
    flat.write_text('domain = "flat.test"\n')
    assert RegistrySettings.load(nested).domain == "nested.test"
    assert RegistrySettings.load(flat).domain == "flat.test"
    monkeypatch.setenv("PAAS_DOMAIN", "env.test")
    assert RegistrySettings.load(flat).domain == "env.test"
    assert RegistrySettings.load(flat, domain="cli.test").domain == "cli.test"
    assert RegistrySettings.load(flat, domain=None).domain == "env.test"


def test_the_file_is_read_only_by_the_load_that_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAAS_BIND_PORT", raising=False)
    config = tmp_path / "registry.toml"
    config.write_text("bind_port = 9000\n")
    assert RegistrySettings.load(config).bind_port == 9000
    assert RegistrySettings().bind_port == 8070
    assert RegistrySettings.load().bind_port == 8070


def test_unknown_keys_and_missing_files_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "registry.toml"
    config.write_text("no_such_setting = 1\n")
    with pytest.raises(ValueError, match="no_such_setting"):
        RegistrySettings.load(config)
    missing = tmp_path / "missing.toml"
    for load in (RegistrySettings.load, load_settings):
        with pytest.raises(FileNotFoundError, match=f"config file {missing} does not exist"):
            load(missing)


def test_agent_chain_matches_the_registry_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'role = "machine"\nregistry_url = "http://127.0.0.1:8070"\nname = "m1"\n'
        f'state_dir = "{tmp_path}/s"\nproxy_port = 9000\nhttp_port = 9001\nhttps_port = 9002\n'
    )
    monkeypatch.setenv("PAAS_HTTP_PORT", "9101")
    monkeypatch.setenv("PAAS_HTTPS_PORT", "9102")
    loaded = load_settings(config, https_port=9202, proxy_port=None)
    assert type(loaded) is AgentSettings
    assert (loaded.proxy_port, loaded.http_port, loaded.https_port) == (9000, 9101, 9202)
    assert loaded.state_dir == tmp_path / "s"
    with pytest.raises(ValueError) as refused:
        load_settings(config, join_token="secret-join-token", name="Bad_Name")
    assert "name" in str(refused.value) and "secret-join-token" not in str(refused.value)
