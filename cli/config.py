"""Where the CLI finds the registry and its token: env first, then the saved login file.

The URL may list several registry replicas, comma-separated; the client fails over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from cli.errors import ConfigError
from common.failover import split_urls


class Login(BaseModel):
    registry_url: str
    token: str


def config_path(environ: dict[str, str] | None = None) -> Path:
    """`$PAAS_CONFIG`, else ~/.config/paas/config.json; computed per call, never at import."""
    env = os.environ if environ is None else environ
    if env.get("PAAS_CONFIG"):
        return Path(env["PAAS_CONFIG"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "paas" / "config.json"


def read_saved(path: Path) -> Login | None:
    if not path.exists():
        return None
    try:
        return Login.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise ConfigError(f"cannot read the CLI config {path}: {exc}") from exc


def save(login: Login, path: Path) -> None:
    """Write atomically with mode 0600: the file holds an admin token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(login.model_dump_json(indent=2) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load(environ: dict[str, str] | None = None) -> Login:
    """Env `PAAS_REGISTRY_URL` / `PAAS_TOKEN` override the saved login, field by field."""
    env = os.environ if environ is None else environ
    saved = read_saved(config_path(env))
    url = env.get("PAAS_REGISTRY_URL") or (saved.registry_url if saved else "")
    token = env.get("PAAS_TOKEN") or (saved.token if saved else "")
    if not url or not token:
        raise ConfigError(
            "not logged in: run `paas login --registry URL --token TOKEN`"
            " (or set PAAS_REGISTRY_URL and PAAS_TOKEN)"
        )
    try:  # one URL, or several registry replicas comma-separated (failover, issue 8)
        urls = split_urls(url)
    except ValueError as exc:
        raise ConfigError(f"PAAS_REGISTRY_URL / the saved login: {exc}") from exc
    return Login(registry_url=",".join(urls), token=token)
