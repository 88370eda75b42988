"""The registry's tables (SQLAlchemy 2 ORM): the one source of truth of the cluster."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from controller.store.secretbox import Sealed, SealedJSON


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """SQLite forgets time zones; store UTC and hand back aware datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class App(Base):
    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    instances: Mapped[int] = mapped_column(Integer, default=1)
    health_path: Mapped[str] = mapped_column(String(201), default="/")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The desired_seq at which the set of hosts serving this app last changed: a deploy is
    # routed only once every frontend has applied at least this index.
    routing_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    # Every machine proxy listens on 127.0.0.1:<service_port> for this app, and the
    # apps named in paas.toml depends_on get <NAME>_URL pointing there.
    service_port: Mapped[int | None] = mapped_column(Integer, default=None)
    depends_on: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    # Labels a host must carry to run this app (paas.toml constraints = {zone = "a"}).
    constraints: Mapped[dict[str, str]] = mapped_column(
        JSON, default=dict, server_default=text("'{}'")
    )
    # Memory each instance needs (paas.toml memory = "256M"); None: not declared.
    memory_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    # paas.toml `data = true` pins the app to the host holding its
    # PAAS_DATA_DIR (`data_host`, chosen at its first deploy).
    keeps_data: Mapped[bool | None] = mapped_column(default=None)
    data_host: Mapped[str | None] = mapped_column(String(63), default=None)
    # Instances per non-web Procfile process type (`paas ps:scale APP worker=2`); a type not
    # named here runs DEFAULT_WORKER_COUNT. The web count is `instances`.
    process_counts: Mapped[dict[str, int]] = mapped_column(
        JSON, default=dict, server_default=text("'{}'")
    )
    # paas.toml [app] min_healthy_s / auto_rollback; None: never declared (the defaults).
    min_healthy_s: Mapped[float | None] = mapped_column(Float, default=None)
    auto_rollback: Mapped[bool | None] = mapped_column(default=None)
    # paas.toml [app] health_check_timeout / health_threshold; None: the defaults.
    health_check_timeout_s: Mapped[float | None] = mapped_column(Float, default=None)
    health_threshold: Mapped[int | None] = mapped_column(default=None)

    domains: Mapped[list[Domain]] = relationship(
        back_populates="app", cascade="all, delete-orphan", order_by="Domain.id"
    )
    releases: Mapped[list[Release]] = relationship(
        back_populates="app", cascade="all, delete-orphan", order_by="Release.version"
    )
    config_vars: Mapped[list[ConfigVar]] = relationship(
        back_populates="app", cascade="all, delete-orphan", order_by="ConfigVar.key"
    )
    instance_rows: Mapped[list[Instance]] = relationship(
        back_populates="app", cascade="all, delete-orphan", order_by="Instance.id"
    )


class Domain(Base):
    __tablename__ = "domains"

    id: Mapped[int] = mapped_column(primary_key=True)
    domain: Mapped[str] = mapped_column(String(253), unique=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)

    app: Mapped[App] = relationship(back_populates="domains")


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    processes: Mapped[dict[str, str]] = mapped_column(JSON)
    health_path: Mapped[str] = mapped_column(String(201))
    # Sealed at rest (controller/store/secretbox.py): a snapshot holds every config value.
    config: Mapped[dict[str, str]] = mapped_column(SealedJSON("releases.config"))
    secret_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="deploying")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    # Columns added after the first schema carry a server default, so their alembic revision
    # can add them to a database that already has rows (controller/migrations).
    health_timeout_s: Mapped[float] = mapped_column(Float, server_default=text("30"))
    description: Mapped[str] = mapped_column(Text, server_default=text("''"))
    # A deploy not active by then is failed; stored, so a restarted registry keeps it.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Seconds its instances must stay healthy before the previous release's stop (None: 0),
    # and when that window ends once they all were healthy (controller/core/deploys.py).
    min_healthy_s: Mapped[float | None] = mapped_column(Float, default=None)
    switch_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # The tail of its release phase's output (`release:` Procfile line), when it ran one.
    release_output: Mapped[str | None] = mapped_column(Text, default=None)

    app: Mapped[App] = relationship(back_populates="releases")
    instances: Mapped[list[Instance]] = relationship(
        back_populates="release", cascade="all, delete-orphan", order_by="Instance.id"
    )


class ConfigVar(Base):
    __tablename__ = "config_vars"
    __table_args__ = (UniqueConstraint("app_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(Sealed("config_vars.value"))  # every value, sealed at rest
    secret: Mapped[bool] = mapped_column(default=False)

    app: Mapped[App] = relationship(back_populates="config_vars")


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(253))
    proxy_port: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    applied_index: Mapped[int | None] = mapped_column(Integer, default=None)
    proxy_error: Mapped[str | None] = mapped_column(Text, default=None)
    state: Mapped[str] = mapped_column(String(8), default="up")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The port of the machine agent's API (logs, one-off runs), from its reports.
    api_port: Mapped[int | None] = mapped_column(Integer, default=None)
    # Capacity from the agent's reports (psutil); None until it reports any.
    cpu_count: Mapped[int | None] = mapped_column(Integer, default=None)
    memory_total_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    memory_available_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    load_1m: Mapped[float | None] = mapped_column(Float, default=None)
    # The agent's state folder size and its disk's free/total (MiB).
    state_disk_mb: Mapped[int | None] = mapped_column(BigInteger, default=None)
    disk_free_mb: Mapped[int | None] = mapped_column(BigInteger, default=None)
    disk_total_mb: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Its agent API key (common/agent_auth.py), sealed with the registry's key file
    # (controller/store/agent_keys.py); None: joined before signed agent requests.
    api_key_sealed: Mapped[str | None] = mapped_column(Text, default=None)

    instances: Mapped[list[Instance]] = relationship(back_populates="host", order_by="Instance.id")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    release_id: Mapped[int] = mapped_column(
        ForeignKey("releases.id", ondelete="CASCADE"), index=True
    )
    process: Mapped[str] = mapped_column(String(31))
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    port: Mapped[int | None] = mapped_column(Integer, default=None)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    serve: Mapped[bool] = mapped_column(default=False)
    desired: Mapped[str] = mapped_column(String(8), default="run")  # 'run' | 'stop'
    routed: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What the registry saw of its health: crashes = times it left `running` while it should
    # run; crashing_since = the first such crash not yet followed by a stable healthy run.
    crashes: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    crashing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    running_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    app: Mapped[App] = relationship(back_populates="instance_rows")
    release: Mapped[Release] = relationship(back_populates="instances")
    host: Mapped[Host] = relationship(back_populates="instances")


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # admin | deploy | join | host
    host_name: Mapped[str | None] = mapped_column(String(63), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A label shown by `paas tokens`, and the one app a deploy-scoped token may touch.
    name: Mapped[str | None] = mapped_column(String(63), default=None)
    app_name: Mapped[str | None] = mapped_column(String(63), default=None)
    # Deploy tokens: the domain suffixes an admin allowed it to claim (controller/core/domains.py).
    domains: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))


class AuditEvent(Base):
    """Who (token) did what (method, route, app, summary, result) and when; never a body."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    token_id: Mapped[int | None] = mapped_column(Integer, default=None)
    token_name: Mapped[str | None] = mapped_column(String(63), default=None)
    scope: Mapped[str | None] = mapped_column(String(8), default=None)
    method: Mapped[str] = mapped_column(String(8))
    route: Mapped[str] = mapped_column(String(200))
    app: Mapped[str | None] = mapped_column(String(63), default=None, index=True)
    summary: Mapped[str] = mapped_column(String(300))
    status: Mapped[int] = mapped_column(Integer)


class Revision(Base):
    """One row: `seq` bumps on every change, `desired_seq` on changes agents must act on."""

    __tablename__ = "revision"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    desired_seq: Mapped[int] = mapped_column(Integer, default=0)
    # The last instance id handed out: ids are never reused, even after rows are deleted, so
    # an agent never mistakes a new instance for a departed one with the same id.
    instance_seq: Mapped[int] = mapped_column(Integer, server_default=text("0"))


# Every table is registered on Base.metadata by importing this package: the tables of
# artifacts, certificates and routing options live in their own modules below it.
from controller.store.models.artifacts import ArtifactChunk, StoredArtifact  # noqa: E402, F401
from controller.store.models.certs import (  # noqa: E402, F401
    AcmeAccount,
    AcmeChallenge,
    AcmeDomain,
    Certificate,
)
from controller.store.models.routing import AppRouting  # noqa: E402, F401
