"""cli.config: where the login lives, its file mode, and env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import config
from cli.errors import ConfigError


def test_paas_config_env_wins(tmp_path: Path) -> None:
    assert config.config_path({"PAAS_CONFIG": str(tmp_path / "c.json")}) == tmp_path / "c.json"
    default = config.config_path({"HOME": "/nonexistent", "XDG_CONFIG_HOME": str(tmp_path)})
    assert default == tmp_path / "paas" / "config.json"


def test_save_is_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "config.json"
    config.save(config.Login(registry_url="http://r:1", token="t"), path)
    assert path.stat().st_mode & 0o777 == 0o600
    login = config.load({"PAAS_CONFIG": str(path)})
    assert (login.registry_url, login.token) == ("http://r:1", "t")


def test_env_overrides_each_field(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    config.save(config.Login(registry_url="http://saved:1", token="saved"), path)
    env = {"PAAS_CONFIG": str(path), "PAAS_TOKEN": "from-env"}
    login = config.load(env)
    assert (login.registry_url, login.token) == ("http://saved:1", "from-env")
    env = {"PAAS_CONFIG": str(tmp_path / "none.json"), "PAAS_REGISTRY_URL": "http://e:2/"}
    with pytest.raises(ConfigError, match="not logged in"):
        config.load(env)
    login = config.load({**env, "PAAS_TOKEN": "x"})
    assert login.registry_url == "http://e:2"
