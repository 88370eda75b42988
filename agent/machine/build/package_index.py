"""Where app builds find packages: a host behind a mirror, or offline with a wheel folder.

uv reads neither pip's configuration nor (since builds run as the app's uid with a clean
environment, agent/privexec.py) anything of the agent's own setup, so the index settings are
set once per host (agent settings / user data) and handed to every build explicitly, as the
environment variables uv and pip both read (UV_* and PIP_*). Environment, not argv: a URL
with credentials in an argv would show in /proc/<pid>/cmdline to every local user, the app
uids included; the environment reaches the build only through privexec's memfd.

Credentials in URLs (`https://user:token@mirror/simple`) never appear in a log or in the
error a deploy shows: `redact` masks them in whatever text leaves the agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

URL_SCHEMES = ("http", "https", "file")
# What the build itself owns: an operator's build_env may not move the app's caches or let uv
# download interpreters.
RESERVED_ENV = frozenset(
    {"UV_CACHE_DIR", "PIP_CACHE_DIR", "UV_PYTHON_DOWNLOADS", "UV_PYTHON", "UV_PROJECT_ENVIRONMENT"}
)
ENV_KEY = re.compile(r"^(UV|PIP)_[A-Z0-9_]{1,64}$")
HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"<>]+@")


class PackageIndexError(ValueError):
    """A package index setting that no build could use; one clear line."""


def redact(text: str) -> str:
    """`https://user:token@mirror/simple` -> `https://****@mirror/simple`, anywhere in text."""
    return _CREDENTIALS.sub(r"\g<scheme>****@", text)


def check_url(value: str, *, what: str) -> str:
    """An index URL: http, https or file (a file URL's folder must exist)."""
    if any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        raise PackageIndexError(f"{what} {redact(value)!r} must not contain spaces or controls")
    parts = urlsplit(value)
    if parts.scheme not in URL_SCHEMES:
        raise PackageIndexError(
            f"{what} {redact(value)!r} must be an http://, https:// or file:// URL"
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise PackageIndexError(f"{what} {value!r}: a file URL names no host")
        _existing(Path(unquote(parts.path)), what=what)
    elif not parts.hostname:
        raise PackageIndexError(f"{what} {redact(value)!r} names no host")
    return value


def check_location(value: str, *, what: str = "find_links") -> str:
    """A find-links entry: a URL as above, or an absolute path to an existing folder/file."""
    if "://" in value:
        return check_url(value, what=what)
    if any(ch.isspace() or ch == "," or ord(ch) < 0x20 for ch in value):
        raise PackageIndexError(f"{what} {value!r} must not contain spaces, commas or controls")
    path = Path(value)
    if not path.is_absolute():
        raise PackageIndexError(f"{what} {value!r} must be an absolute path or a URL")
    _existing(path, what=what)
    return value


def check_trusted_host(value: str) -> str:
    """`mirror.internal` or `mirror.internal:8443`: TLS to it is not verified (uv
    --allow-insecure-host, pip --trusted-host)."""
    if not HOST.fullmatch(value):
        raise PackageIndexError(f"trusted host {value!r} must be a host name or host:port")
    return value


def check_build_env(env: dict[str, str]) -> dict[str, str]:
    """Extra UV_* / PIP_* variables for builds (e.g. UV_INDEX_STRATEGY); nothing else."""
    for key, value in env.items():
        if not ENV_KEY.fullmatch(key):
            raise PackageIndexError(f"build_env key {key!r} must be a UV_* or PIP_* variable")
        if key in RESERVED_ENV:
            raise PackageIndexError(f"build_env may not set {key}: the agent sets it per app")
        if "\x00" in value or "\n" in value:
            raise PackageIndexError(f"build_env {key} must be one line")
    return env


def _existing(path: Path, *, what: str) -> None:
    if not path.exists():
        raise PackageIndexError(f"{what} {str(path)!r} does not exist")


@dataclass(frozen=True)
class PackageIndex:
    """A host's package index settings; the default (nothing set) means PyPI."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    no_index: bool = False
    build_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.index_url is not None:
            check_url(self.index_url, what="index_url")
        for url in self.extra_index_urls:
            check_url(url, what="extra_index_urls")
        for location in self.find_links:
            check_location(location)
        for host in self.trusted_hosts:
            check_trusted_host(host)
        check_build_env(self.build_env)
        if self.no_index and not self.find_links:
            raise PackageIndexError("no_index needs find_links: builds would find no package")

    @property
    def is_default(self) -> bool:
        return self == PackageIndex()

    def uv_env(self) -> dict[str, str]:
        """The variables `uv venv` / `uv pip install` read (UV_NO_INDEX has no variable:
        see `uv_args`)."""
        env = dict(self.build_env)
        if self.index_url is not None:
            env["UV_INDEX_URL"] = self.index_url
        if self.extra_index_urls:
            env["UV_EXTRA_INDEX_URL"] = " ".join(self.extra_index_urls)
        if self.find_links:
            env["UV_FIND_LINKS"] = ",".join(self.find_links)
        if self.trusted_hosts:
            env["UV_INSECURE_HOST"] = " ".join(self.trusted_hosts)
        return env

    def uv_args(self) -> list[str]:
        """Options for `uv pip install` (no URL ever: those go in the environment)."""
        return ["--no-index"] if self.no_index else []

    def pip_env(self) -> dict[str, str]:
        """The same for `python -m pip install` (the fallback when uv is missing)."""
        env = dict(self.build_env)
        if self.index_url is not None:
            env["PIP_INDEX_URL"] = self.index_url
        if self.extra_index_urls:
            env["PIP_EXTRA_INDEX_URL"] = " ".join(self.extra_index_urls)
        if self.find_links:
            env["PIP_FIND_LINKS"] = " ".join(self.find_links)
        if self.trusted_hosts:
            env["PIP_TRUSTED_HOST"] = " ".join(self.trusted_hosts)  # host or host:port
        if self.no_index:
            env["PIP_NO_INDEX"] = "1"
        return env

    def describe(self) -> str:
        """One line for the agent's log, credentials masked."""
        if self.is_default:
            return "the default index (PyPI)"
        parts = []
        if self.index_url is not None:
            parts.append(f"index {self.index_url}")
        parts += [f"extra index {url}" for url in self.extra_index_urls]
        parts += [f"find-links {location}" for location in self.find_links]
        parts += [f"trusted host {host}" for host in self.trusted_hosts]
        if self.no_index:
            parts.append("no index")
        if self.build_env:
            parts.append("env " + " ".join(sorted(self.build_env)))
        return redact(", ".join(parts))
