"""Where the CLI finds the registry and its token: env first, then the saved login file.

The URL may list several registry replicas, comma-separated; the client fails over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ValidationError

from cli.errors import ConfigError
from common.failover import split_urls
from common.fsutil import atomic_write
from common.registry_tls import RegistryTrust, RegistryTrustError, parse_pins


class Login(BaseModel):
    registry_url: str
    token: str
    # How an https:// registry proves itself (common/registry_tls.py): the pinned SHA-256
    # fingerprint(s) of its certificate, or a CA file. Saved by `paas login`.
    registry_fingerprint: str | None = None
    registry_ca: str | None = None

    def trust(self) -> RegistryTrust:
        try:
            return RegistryTrust.of(ca_file=self.registry_ca, fingerprint=self.registry_fingerprint)
        except RegistryTrustError as exc:
            raise ConfigError(str(exc)) from exc


def insecure_http(environ: dict[str, str] | None = None) -> bool:
    """`PAAS_REGISTRY_INSECURE_HTTP=1`: allow http:// off loopback (a trusted test network)."""
    env = os.environ if environ is None else environ
    return env.get("PAAS_REGISTRY_INSECURE_HTTP", "") in {"1", "true", "yes"}


def config_path(environ: Mapping[str, str] | None = None) -> Path:
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
    atomic_write(path, login.model_dump_json(indent=2, exclude_none=True) + "\n", mode=0o600)


def load(environ: Mapping[str, str] | None = None) -> Login:
    """Env `PAAS_REGISTRY_URL` / `PAAS_TOKEN` / `PAAS_REGISTRY_FINGERPRINT` /
    `PAAS_REGISTRY_CA` override the saved login, field by field."""
    env = os.environ if environ is None else environ
    saved = read_saved(config_path(env))
    url = env.get("PAAS_REGISTRY_URL") or (saved.registry_url if saved else "")
    token = env.get("PAAS_TOKEN") or (saved.token if saved else "")
    if not url or not token:
        raise ConfigError(
            "not logged in: run `paas login --registry URL --token TOKEN`"
            " (or set PAAS_REGISTRY_URL and PAAS_TOKEN)"
        )
    pin = env.get("PAAS_REGISTRY_FINGERPRINT") or (saved.registry_fingerprint if saved else None)
    ca = env.get("PAAS_REGISTRY_CA") or (saved.registry_ca if saved else None)
    try:  # one URL, or several registry replicas comma-separated (failover)
        urls = split_urls(url)
        pins = ",".join(parse_pins(pin)) or None
    except ValueError as exc:
        raise ConfigError(f"PAAS_REGISTRY_URL / the saved login: {exc}") from exc
    return Login(
        registry_url=",".join(urls), token=token, registry_fingerprint=pins, registry_ca=ca
    )
