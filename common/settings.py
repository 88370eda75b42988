"""One source chain for the registry's and the agents' settings.

Precedence, lowest first: the field defaults < a TOML file < `PAAS_*` environment variables <
explicit overrides (the command-line options). An override whose value is None counts as not
given, so an unset option never hides the environment or the file.
"""

from __future__ import annotations

import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# The file `load` reads, seen by `settings_customise_sources` (a classmethod, so it cannot be
# handed the path as an argument; a subclass per call is what this replaces).
_config_file: ContextVar[Path | None] = ContextVar("paas_config_file", default=None)


class TomlFileSource(InitSettingsSource):
    """The values of a TOML file; with `table`, those under `[table]` if the file has one."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path, *, table: str | None) -> None:
        with path.open("rb") as f:
            data: dict[str, Any] = tomllib.load(f)
        if table is not None:
            data = data.get(table, data)
        super().__init__(settings_cls, init_kwargs=data)


class PaasSettings(BaseSettings):
    """Base of RegistrySettings and AgentSettings: the `PAAS_` prefix, unknown keys refused."""

    model_config = SettingsConfigDict(env_prefix="PAAS_", extra="forbid")

    # The file may keep this class's values under [<toml_table>] (the registry's does).
    toml_table: ClassVar[str | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = (init_settings, env_settings, dotenv_settings, file_secret_settings)
        path = _config_file.get()
        if path is None:
            return sources
        return (*sources, TomlFileSource(settings_cls, path, table=cls.toml_table))

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Self:
        """Settings from the whole chain; overrides whose value is None are dropped."""
        given = {name: value for name, value in overrides.items() if value is not None}
        path = Path(config_file) if config_file is not None else None
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        reset = _config_file.set(path)
        try:
            return cls(**given)
        finally:
            _config_file.reset(reset)
