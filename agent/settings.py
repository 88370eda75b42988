"""Typed agent settings, validated once at start: CLI options > PAAS_* environment > TOML file
(the chain of common/settings.py).

Every value that reaches a config file, a path or an argv is checked here with common.names,
so a typo stops the agent with one clear line instead of producing a broken proxy config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from agent.machine.build.package_index import (
    PackageIndex,
    check_build_env,
    check_location,
    check_trusted_host,
    check_url,
)
from agent.machine.run.uids import parse_uid_range
from common.failover import split_urls
from common.names import check_address, check_domain, check_host_name, check_label
from common.registry_tls import RegistryTrust, check_urls, parse_pins
from common.settings import PaasSettings

Role = Literal["machine", "frontend"]


class AgentSettings(PaasSettings):
    """Everything an agent needs to know about itself; one instance per process."""

    # Errors name the setting, never echo its value: index URLs and join_token hold secrets.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    role: Role
    registry_url: str
    # An https:// registry proves itself by a CA file or the pinned sha256 of its
    # certificate (common/registry_tls.py); http:// only on loopback unless the opt-in.
    registry_ca: Path | None = None
    registry_fingerprint: str | None = None
    registry_insecure_http: bool = False
    join_token: str | None = None
    name: str
    address: str = "127.0.0.1"
    state_dir: Path
    proxy_port: int = 8081
    http_port: int = 8080
    https_port: int = 8443
    template_dir: Path | None = None
    port_range: str = "20000-29999"
    heartbeat_interval_s: float = 5.0
    watch_wait_s: float = 30.0
    nginx_bin: str = "nginx"
    haproxy_bin: str = "haproxy"
    tls_cert: Path | None = None
    # frontend: the cluster domain; the self-signed default certificate covers *.<domain>.
    domain: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    # machine, agent running as root: every app runs as its own uid from this range (gid =
    # uid, no passwd entry needed; agent/machine/run/uids.py). A non-root agent runs apps as itself.
    app_uids: str = "70000-79999"
    # Deprecated and ignored (one shared user let apps read each other): apps get their own
    # uid from app_uids. Still accepted so settings files written earlier keep working.
    run_as_user: str | None = None
    # machine: bounds on what apps may use (agent/machine/run/cgroups.py). Memory per instance
    # comes from
    # the app's paas.toml (`memory = "256M"`); without it an instance has no hard limit.
    app_pids_max: int = Field(default=512, ge=16, le=4_194_304)  # processes+threads per app
    app_cpu_weight: int = Field(default=100, ge=1, le=10000)  # relative CPU share per app
    build_memory_mb: int = Field(default=2048, ge=64)  # a venv build's memory limit
    max_instances: int = Field(default=200, ge=1, le=100_000)  # instances on this host
    release_max_mb: int = Field(default=512, ge=1, le=64 * 1024)  # unpacked release size
    # The agent's own API (logs, one-off runs, /metrics) on `address`; 0 = any free
    # port (reported to the registry). Instance logs rotate at log_max_bytes, keeping log_keep.
    api_port: int = Field(default=0, ge=0, le=65535)
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=4096)
    log_keep: int = Field(default=3, ge=0, le=100)
    run_timeout_s: float = Field(default=3600.0, gt=0)
    # A worker (a non-web Procfile process: no port, no health check) counts as healthy once
    # its process has stayed up this long.
    worker_up_s: float = Field(default=1.0, gt=0, le=300)
    # Disk hygiene (agent/machine/storage/janitor.py, agent/machine/storage/disk.py): release
    # folders kept per app (plus those in use), unused venvs removed once this old, an app
    # with no instance here for gone_app_s loses its folders (not its data); new releases are
    # refused while free space is below min_free_mb or min_free_percent. disk_check_s: how
    # often all this runs.
    keep_releases: int = Field(default=5, ge=2, le=1000)
    venv_min_age_s: float = Field(default=600.0, ge=0)
    gone_app_s: float = Field(default=600.0, ge=0)
    min_free_mb: int = Field(default=1024, ge=0)
    min_free_percent: float = Field(default=5.0, ge=0, le=100)
    disk_check_s: float = Field(default=60.0, gt=0)
    # Where app builds find packages (agent/machine/build/package_index.py), for hosts behind a
    # mirror or offline; passed to uv and pip explicitly (builds see a clean environment).
    index_url: str | None = None
    extra_index_urls: list[str] = Field(default_factory=list)
    # folders (absolute paths) or URLs of wheels
    find_links: list[str] = Field(default_factory=list)
    # TLS not verified: uv --allow-insecure-host
    trusted_hosts: list[str] = Field(default_factory=list)
    no_index: bool = False  # only find_links (offline)
    # more UV_* / PIP_* variables for builds
    build_env: dict[str, str] = Field(default_factory=dict)

    @field_validator("index_url")
    @classmethod
    def _index_url(cls, value: str | None) -> str | None:
        return check_url(value, what="index_url") if value is not None else None

    @field_validator("extra_index_urls")
    @classmethod
    def _extra_index_urls(cls, value: list[str]) -> list[str]:
        return [check_url(url, what="extra_index_urls") for url in value]

    @field_validator("find_links")
    @classmethod
    def _find_links(cls, value: list[str]) -> list[str]:
        return [check_location(location) for location in value]

    @field_validator("trusted_hosts")
    @classmethod
    def _trusted_hosts(cls, value: list[str]) -> list[str]:
        return [check_trusted_host(host) for host in value]

    @field_validator("build_env")
    @classmethod
    def _build_env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_build_env(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_host_name(value)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return check_domain(value) if value is not None else None

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, value: str) -> str:
        """One URL, or several registry replicas comma-separated (failover)."""
        if not all(u.strip().startswith(("http://", "https://")) for u in value.split(",")):
            raise ValueError(f"registry_url {value!r} must start with http:// or https://")
        return ",".join(split_urls(value))

    @field_validator("registry_fingerprint")
    @classmethod
    def _registry_fingerprint(cls, value: str | None) -> str | None:
        return ",".join(parse_pins(value)) or None if value is not None else None

    @model_validator(mode="after")
    def _registry_trust(self) -> AgentSettings:
        check_urls(
            split_urls(self.registry_url),
            self.registry_trust,
            insecure_http=self.registry_insecure_http,
        )
        return self

    @property
    def registry_trust(self) -> RegistryTrust:
        return RegistryTrust.of(ca_file=self.registry_ca, fingerprint=self.registry_fingerprint)

    @field_validator("run_as_user")
    @classmethod
    def _run_as_user(cls, value: str | None) -> str | None:
        return check_label(value) if value is not None else None

    @field_validator("app_uids")
    @classmethod
    def _app_uids(cls, value: str) -> str:
        parse_uid_range(value)
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            check_label(key)
            check_label(label)
        return value

    @field_validator("proxy_port", "http_port", "https_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} is outside 1-65535")
        return value

    @field_validator("heartbeat_interval_s", "watch_wait_s")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("state_dir", "template_dir", "tls_cert", "registry_ca")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Absolute so that proxies started with another cwd find the same files.
        return value.expanduser().absolute() if value is not None else None

    @model_validator(mode="after")
    def _range(self) -> AgentSettings:
        parse_port_range(self.port_range)  # refuse a bad range at start, not at first use
        self.package_index  # noqa: B018  the combination (no_index needs find_links)
        return self

    @property
    def package_index(self) -> PackageIndex:
        """The index settings every build on this host uses."""
        return PackageIndex(
            index_url=self.index_url,
            extra_index_urls=tuple(self.extra_index_urls),
            find_links=tuple(self.find_links),
            trusted_hosts=tuple(self.trusted_hosts),
            no_index=self.no_index,
            build_env=dict(self.build_env),
        )

    @property
    def port_bounds(self) -> tuple[int, int]:
        """The inclusive (low, high) port range for app instances."""
        return parse_port_range(self.port_range)

    @property
    def app_uid_bounds(self) -> tuple[int, int]:
        return parse_uid_range(self.app_uids)

    @property
    def operator_template_dir(self) -> Path:
        """Templates here override the packaged ones, file by file: --template-dir, else
        <state_dir>/templates (it may not exist)."""
        return self.template_dir if self.template_dir is not None else self.state_dir / "templates"

    @property
    def host_token_file(self) -> Path:
        return self.state_dir / "host-token"

    @property
    def advertised_proxy_port(self) -> int:
        """The port others reach this host's proxy on: nginx for machines, HTTPS for frontends."""
        return self.https_port if self.role == "frontend" else self.proxy_port


def parse_port_range(text: str) -> tuple[int, int]:
    """'20000-29999' -> (20000, 29999); refuses reversed or out-of-range bounds."""
    try:
        low_text, high_text = text.split("-", 1)
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise ValueError(f"port_range {text!r} must look like 20000-29999") from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"port_range {text!r} must be two ports, low first, within 1-65535")
    return low, high


def load_settings(config_file: Path | None = None, **overrides: Any) -> AgentSettings:
    """Settings with precedence overrides > PAAS_* env > TOML `config_file` (None: not given)."""
    return AgentSettings.load(config_file, **overrides)
