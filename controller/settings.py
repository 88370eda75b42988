"""Typed registry settings: defaults < TOML file < `PAAS_*` environment < command-line options
(the chain of common/settings.py; the file may keep them under [registry])."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, SecretStr, field_validator

from common.names import check_domain
from common.settings import PaasSettings

if TYPE_CHECKING:
    from controller.store.secretbox import Keyring


class RegistrySettings(PaasSettings):
    toml_table: ClassVar[str | None] = "registry"

    state_dir: Path = Path("./paas-state")
    database_url: str | None = None  # default: sqlite:///<state_dir>/registry.db
    # Apply pending schema revisions at start. Default (None): only for the embedded SQLite
    # default, so `make demo` and the tests need no step; a shared database (PostgreSQL, several
    # replicas) is migrated once by `paas-registry migrate` and a registry refuses to start on
    # a database with pending revisions.
    migrate_on_start: bool | None = None
    bind_host: str = "127.0.0.1"
    bind_port: int = Field(default=8070, ge=0, le=65535)
    domain: str = "localhost"  # the cluster domain: every app answers on <app>.<domain>
    public_https_port: int = Field(default=443, ge=1, le=65535)  # only for URLs shown to users
    max_artifact_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    # Artifact GC (controller/store/artifact_gc.py): artifacts no release names are removed once
    # older than the grace period (an upload waits for its release that long), checked this often.
    artifact_gc_grace_s: float = Field(default=3600, ge=0)
    artifact_gc_interval_s: float = Field(default=600, gt=0)
    deploy_timeout_s: float = Field(default=300, gt=0)
    heartbeat_ttl_s: float = Field(default=30, gt=0)
    # The range the fixed per-app service ports (127.0.0.1:<port> on every host) come from.
    service_port_min: int = Field(default=20000, ge=1024, le=65535)
    service_port_max: int = Field(default=29999, ge=1024, le=65535)
    # ACME (http-01). No directory URL: `paas certs:auto` is refused.
    acme_directory_url: str | None = None  # e.g. https://acme-v02.api.letsencrypt.org/directory
    acme_ca_bundle: Path | None = None  # CA file trusted for the directory (a test CA)
    acme_email: str | None = None  # contact of the registry's ACME account
    acme_renew_before_days: float = Field(default=30, ge=0)  # renew this long before expiry
    acme_check_interval_s: float = Field(default=3600, gt=0)  # how often to look for due work
    acme_retry_min_s: float = Field(default=60, gt=0)  # first retry after a failure...
    acme_retry_max_s: float = Field(default=6 * 3600, gt=0)  # ...doubling up to this
    acme_publish_timeout_s: float = Field(default=30, gt=0)  # frontends must serve answers
    # Audit events older than this are deleted (checked every few hundred writes).
    audit_keep_days: float = Field(default=365, gt=0)
    # Limits at the registry's edge, checked before any work (docs/operations.md).
    header_timeout_s: float = Field(default=10, gt=0)  # request line + headers must arrive
    keepalive_timeout_s: float = Field(default=5, gt=0)  # an idle kept-alive connection closes
    body_idle_timeout_s: float = Field(default=30, gt=0)  # a body that stops arriving: 408
    max_connections: int = Field(default=4096, ge=1)  # in total (kept under RLIMIT_NOFILE / 2)
    max_connections_per_client: int = Field(default=256, ge=1)  # per client address
    # Connections with no request head yet: at this cap a newcomer evicts the oldest of them.
    max_pending_connections: int = Field(default=1024, ge=1)  # (at most the total cap)
    max_uploads_per_token: int = Field(default=2, ge=1)  # artifact uploads at once per token
    max_uploads: int = Field(default=8, ge=1)  # artifact uploads at once in total
    max_json_bytes: int = Field(default=1024 * 1024, ge=1)  # any body but an artifact upload
    token_rate_per_s: float = Field(default=50, gt=0)  # mutating requests per token...
    token_burst: int = Field(default=200, ge=1)  # ...with this many at once
    # The keyring sealing secrets at rest (controller/store/secretbox.py): PAAS_SECRET_KEY
    # (its text), else this file, else <state_dir>/secret.key (made 0600 on first use).
    secret_key_file: Path | None = None
    secret_key: SecretStr | None = Field(default=None, repr=False)
    # TLS on the wire (controller/server/tls_identity.py). Off loopback the registry speaks
    # HTTPS with this pair, else with a self-signed one made in <state_dir>/tls/ at first start;
    # plain HTTP there only with insecure_http (behind a TLS-terminating proxy on the host).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return check_domain(value)

    @field_validator("acme_directory_url")
    @classmethod
    def _acme_directory(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("acme_directory_url must be an https:// URL (RFC 8555 6.1)")
        return value

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'registry.db'}"

    @property
    def migrates_on_start(self) -> bool:
        if self.migrate_on_start is not None:
            return self.migrate_on_start
        return self.database_url is None

    def keyring(self) -> Keyring:
        from controller.store.secretbox import keyring_for

        key = self.secret_key.get_secret_value() if self.secret_key is not None else None
        return keyring_for(self.state_dir, key=key, key_file=self.secret_key_file)

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    def app_url(self, app: str) -> str:
        return self.url_for(f"{app}.{self.domain}")

    def url_for(self, domain: str) -> str:
        port = "" if self.public_https_port == 443 else f":{self.public_https_port}"
        return f"https://{domain}{port}/"
