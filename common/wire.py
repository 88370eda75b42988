"""The JSON shapes that cross the network between the registry, the agents and the CLI.

One module so that every side validates the same way: the registry uses these as FastAPI
request/response models, the agents and the CLI parse responses with them. Every field that
can reach a proxy config, a path or an argv is one of the strict types of `common.names`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.manifest import (
    DEFAULT_HEALTH_CHECK_TIMEOUT_S,
    DEFAULT_HEALTH_THRESHOLD,
    DEFAULT_HEALTH_TIMEOUT_S,
    MAX_HEALTH_CHECK_TIMEOUT_S,
    MAX_HEALTH_THRESHOLD,
    MAX_HEALTH_TIMEOUT_S,
    MIN_HEALTH_CHECK_TIMEOUT_S,
    MIN_HEALTH_TIMEOUT_S,
)
from common.names import (
    AcmeKeyAuthorization,
    AcmeToken,
    Address,
    AppName,
    Domain,
    EnvKey,
    EnvValue,
    HealthPath,
    HostName,
    Label,
    Port,
    ProcessType,
    Sha256,
)

HostRole = Literal["machine", "frontend"]
HostState = Literal["up", "down"]

# pending: placed, the agent has not picked it up yet; installing: fetching the artifact and
# building its environment; starting: process started, health check not passed yet;
# running: healthy; unhealthy: was running, its health check now fails; backoff: exited,
# waiting to restart; failed: gave up (install error, crash loop, health check never passed);
# stopping / stopped: being or already taken out of service; lost: on a host that missed its
# heartbeats (not counted, replaced elsewhere; stopped if that host ever returns).
InstanceState = Literal[
    "pending",
    "installing",
    "starting",
    "running",
    "unhealthy",
    "backoff",
    "failed",
    "stopping",
    "stopped",
    "lost",
]

# deploying: its instances are being installed and health-checked beside the current ones;
# active: the release the app serves; superseded: an earlier active release;
# failed: never became active (the reason is in `error`).
ReleaseStatus = Literal["deploying", "active", "superseded", "failed"]

# What `paas deploy` prints, in order; "failed" ends a deploy too.
DeployStage = Literal[
    "uploaded", "release phase", "installing", "starting", "healthy", "routed", "failed"
]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- apps -------------------------------------------------------------------------------


class AppCreate(Model):
    name: AppName
    domains: list[Domain] = Field(default_factory=list, max_length=100)
    instances: int = Field(default=1, ge=0, le=100)
    health_path: HealthPath = "/"


ProcessCount = Annotated[int, Field(ge=0, le=100)]


class AppUpdate(Model):
    domains: list[Domain] | None = Field(default=None, max_length=100)
    instances: int | None = Field(default=None, ge=0, le=100)
    # `paas ps:scale APP web=3 worker=2`: instances per Procfile process type ("web" is the
    # same count as `instances`); types not named keep their count.
    process_counts: dict[ProcessType, ProcessCount] | None = Field(default=None, max_length=20)
    health_path: HealthPath | None = None


class App(Model):
    name: AppName
    domains: list[Domain]  # the domains the user added; the cluster one is in `urls`
    instances: int
    health_path: HealthPath
    urls: list[str]  # https://<app>.<cluster domain>[:port]/ first, then one per domain
    active_release: int | None
    created_at: datetime
    # The app's fixed service port (every machine proxy listens on
    # 127.0.0.1:<service_port> for it) and the apps it depends on (paas.toml depends_on).
    service_port: Port | None = None
    depends_on: list[AppName] = Field(default_factory=list)
    # Instances per worker process type that was scaled (a type not named runs 1).
    process_counts: dict[ProcessType, int] = Field(default_factory=dict)
    # paas.toml `data = true`: the host holding its PAAS_DATA_DIR, which it is pinned to.
    data_host: HostName | None = None


class RouteOptions(Model):
    """Per-app routing settings an app owner may change (`paas routing:set`); typed values
    only, rendered by the proxies' templates (no raw config from app owners)."""

    max_body_mb: int = Field(default=100, ge=1, le=10240)  # larger request bodies get 413
    read_timeout_s: int = Field(default=60, ge=1, le=3600)  # waiting for the app to answer
    websocket: bool = True  # pass `Upgrade` through to the app
    https_redirect: bool = True  # plain HTTP gets a 301 to HTTPS; off: served over HTTP too
    hsts_max_age_s: int = Field(default=0, ge=0, le=63072000)  # 0: no HSTS header
    maintenance: bool = False  # the frontends answer 503 without asking the app


class RouteOptionsUpdate(Model):
    max_body_mb: int | None = Field(default=None, ge=1, le=10240)
    read_timeout_s: int | None = Field(default=None, ge=1, le=3600)
    websocket: bool | None = None
    https_redirect: bool | None = None
    hsts_max_age_s: int | None = Field(default=None, ge=0, le=63072000)
    maintenance: bool | None = None


class DomainAdd(Model):
    """`paas domains:add APP DOMAIN`: an exact name or a wildcard `*.example.com`."""

    domain: Domain


class CertAdd(Model):
    """`paas certs:add APP --cert FILE --key FILE`: a PEM chain (leaf first) and its key."""

    cert_pem: str = Field(max_length=65536)
    key_pem: str = Field(max_length=65536)


class Cert(Model):
    app: AppName
    sha256: Sha256  # of the leaf certificate (DER)
    names: list[Domain]  # DNS names the certificate is valid for
    covers: list[Domain]  # the app's domains it is served for (SNI)
    not_after: datetime
    source: Literal["user", "acme"]
    created_at: datetime


class AcmeAdd(Model):
    """`paas certs:auto APP DOMAIN`: get (and keep renewing) a certificate for DOMAIN by ACME."""

    domain: Domain


# pending: waiting for its first certificate; valid: a certificate is served (and renewed);
# error: the last attempt failed (`last_error`), retried at `next_attempt_at`.
AcmeState = Literal["pending", "valid", "error"]


class AcmeStatus(Model):
    app: AppName
    domain: Domain
    state: AcmeState
    cert_sha256: Sha256 | None  # the certificate currently served for it
    not_after: datetime | None
    renew_after: datetime | None  # when the registry renews it
    attempts: int  # failed attempts since the last success
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime


# ---- artifacts --------------------------------------------------------------------------


class Artifact(Model):
    sha256: Sha256
    size: int


# ---- releases ---------------------------------------------------------------------------


class ReleaseCreate(Model):
    artifact_sha256: Sha256


class RollbackRequest(Model):
    version: int | None = Field(default=None, ge=1)  # None: the release before the active one


class InstanceView(Model):
    id: int
    app: AppName
    release: int
    process: ProcessType
    host: HostName
    port: Port | None
    state: InstanceState
    routed: bool  # the host's proxy sends traffic to it
    error: str | None
    updated_at: datetime
    # Times the registry saw it leave `running` while it should run (agents send no count).
    crashes: int = 0


class Release(Model):
    app: AppName
    version: int
    artifact_sha256: Sha256
    processes: dict[ProcessType, str]  # from the Procfile in the artifact
    health_path: HealthPath
    config: dict[EnvKey, str]  # the config snapshot, secrets redacted in listings
    status: ReleaseStatus
    stage: DeployStage  # how far the deploy got; "routed" means it serves
    error: str | None  # why it failed: the last lines of the install or process log
    created_at: datetime
    instances: list[InstanceView] = Field(default_factory=list)
    # Seconds a new instance has to pass its health check (paas.toml [app] health_timeout).
    health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S
    # What made it: "deploy <sha[:12]>", "config: set A, B; unset C", "rollback to v3",
    # "auto-rollback to v3: v4 crash-looped (...)".
    description: str = ""
    # Seconds its instances must stay healthy before the previous release stops (paas.toml
    # [app] min_healthy_s); set while it waits for that.
    min_healthy_s: float = 0.0
    # While its web instances crash-loop: which one and why (`paas status` says crashing).
    crashing: str | None = None
    # The tail of its release phase's output (Procfile `release:`), once that ran.
    release_output: str | None = None


# ---- config vars (added by the registry engineer: `paas config`) -----------------------


class ConfigUpdate(Model):
    set: dict[EnvKey, EnvValue] = Field(default_factory=dict, max_length=500)
    unset: list[EnvKey] = Field(default_factory=list, max_length=500)
    secret: list[EnvKey] = Field(default_factory=list, max_length=500)  # keys to redact in views


class ConfigVars(Model):
    vars: dict[EnvKey, str]  # secret values redacted unless an admin asked ?reveal=true
    secret: list[EnvKey]
    release: int | None = None  # the release a change started (None: nothing deployed yet)


# ---- hosts ------------------------------------------------------------------------------


class HostJoin(Model):
    name: HostName
    role: HostRole
    address: Address  # where other hosts reach this host's proxy
    proxy_port: Port  # machine: nginx port; frontend: HAProxy HTTPS port
    labels: dict[Label, Label] = Field(default_factory=dict, max_length=50)


class HostJoined(Model):
    name: HostName
    token: str  # the host's own bearer token: read desired state, report status


class Host(Model):
    name: HostName
    role: HostRole
    address: Address
    proxy_port: Port
    labels: dict[Label, Label]
    state: HostState
    last_heartbeat: datetime | None
    instances: int
    proxy_error: str | None  # the validator's message while the last render is refused
    capacity: HostCapacity | None = None  # from the agent's last report that carried it


# ---- what a machine agent is told to run ------------------------------------------------


class DesiredInstance(Model):
    id: int
    app: AppName
    release: int
    process: ProcessType
    command: str  # the Procfile line; run with /bin/sh -c, values only through env
    artifact_sha256: Sha256
    env: dict[EnvKey, EnvValue]  # config snapshot (secrets included) + built-in variables
    health_path: HealthPath
    domains: list[Domain]  # every domain of the app, cluster domain included
    serve: bool  # route traffic to it once healthy (its release is the app's active one)
    routing: RouteOptions = Field(default_factory=RouteOptions)  # the app's routing options
    # A started instance that passes no health check within this many seconds is failed.
    health_timeout_s: float = Field(
        default=DEFAULT_HEALTH_TIMEOUT_S, ge=MIN_HEALTH_TIMEOUT_S, le=MAX_HEALTH_TIMEOUT_S
    )
    # paas.toml `memory`, per instance: the agent enforces it as a hard cgroup limit.
    memory_mb: int | None = Field(default=None, ge=1, le=1024 * 1024)
    # Health checks: a running instance's check waits this long for an answer; one that
    # times out while the process lives and listens is "busy", and only this many failed
    # checks in a row take it out of service (a refused connection does at once). paas.toml
    # [app] health_check_timeout / health_threshold.
    health_check_timeout_s: float = Field(
        default=DEFAULT_HEALTH_CHECK_TIMEOUT_S,
        ge=MIN_HEALTH_CHECK_TIMEOUT_S,
        le=MAX_HEALTH_CHECK_TIMEOUT_S,
    )
    health_threshold: int = Field(default=DEFAULT_HEALTH_THRESHOLD, ge=1, le=MAX_HEALTH_THRESHOLD)


class ServiceRoute(Model):
    """A service endpoint: a machine proxy listens on 127.0.0.1:`port` for app `name` and
    forwards to the machine proxies (`servers`) that route a healthy instance of it, with Host
    `domain`."""

    name: AppName
    port: Port
    domain: Domain  # the app's cluster domain, sent as Host to the other hosts' proxies
    servers: list[RouteServer]


class DesiredState(Model):
    index: int
    host: HostName
    instances: list[DesiredInstance]
    services: list[ServiceRoute] = Field(default_factory=list)  # every app with a service port
    # The only clients a machine proxy serves: the frontend hosts (their forwarded
    # headers are trusted) and the machine hosts (service traffic between proxies).
    frontends: list[Address] = Field(default_factory=list, max_length=1000)
    machines: list[Address] = Field(default_factory=list, max_length=10000)


# ---- what an agent reports --------------------------------------------------------------


class InstanceReport(Model):
    id: int
    state: InstanceState
    port: Port | None = None
    routed: bool = False  # the live proxy config sends traffic to it
    error: str | None = Field(default=None, max_length=8192)


class HostCapacity(Model):
    """What a host has, measured by its agent with psutil and sent with its heartbeats."""

    cpu_count: int = Field(ge=1, le=65536)
    memory_total_mb: int = Field(ge=0, le=2**31 - 1)
    memory_available_mb: int = Field(ge=0, le=2**31 - 1)
    load_1m: float = Field(ge=0, le=1e6)  # 1-minute load average
    # Disk: what the agent's state folder holds, and free/total space on its disk.
    state_disk_mb: int | None = Field(default=None, ge=0, le=2**40)
    disk_free_mb: int | None = Field(default=None, ge=0, le=2**40)
    disk_total_mb: int | None = Field(default=None, ge=0, le=2**40)


class HostReport(Model):
    instances: list[InstanceReport] = Field(default_factory=list)
    applied_index: int | None = None  # the desired/routing index the live proxy reflects
    proxy_error: str | None = Field(default=None, max_length=8192)
    api_port: Port | None = None  # the machine agent's API (logs, runs, metrics), if it has one
    capacity: HostCapacity | None = None  # machine agents send it; None keeps the last one


# ---- what a frontend agent routes -------------------------------------------------------


class RouteServer(Model):
    host: HostName
    address: Address
    port: Port


class RouteApp(Model):
    name: AppName
    domains: list[Domain]  # cluster domain first
    servers: list[RouteServer]  # machine hosts with a routed, healthy instance of the app
    routing: RouteOptions = Field(default_factory=RouteOptions)
    health_path: HealthPath = "/"  # the active release's; HAProxy checks each machine with it


class RouteCert(Model):
    """A certificate the frontends serve by SNI for `sni` (crt-list); `pem` = chain + key."""

    sha256: Sha256
    sni: list[Domain]
    pem: str = Field(max_length=200_000)


class RouteChallenge(Model):
    """An ACME http-01 answer every frontend serves at /.well-known/acme-challenge/<token>."""

    token: AcmeToken
    key_authorization: AcmeKeyAuthorization


class RoutingTable(Model):
    index: int
    apps: list[RouteApp]
    certs: list[RouteCert] = Field(default_factory=list)
    challenges: list[RouteChallenge] = Field(default_factory=list, max_length=1000)


# ---- operations: tokens, audit, logs, one-off runs, data --------------------------------


class TokenInfo(Model):
    id: int
    scope: str
    name: str | None
    app: str | None
    host: str | None
    domains: list[str] = Field(default_factory=list)
    created_at: datetime


class TokenCreated(TokenInfo):
    token: str  # shown once; the registry keeps only its sha256


class AuditEntry(Model):
    id: int
    at: datetime
    token_id: int | None
    token_name: str | None
    scope: str | None
    method: str
    route: str
    app: str | None
    summary: str
    status: int


class StreamEvent(BaseModel):
    """One NDJSON object of a stream; fields a newer registry adds are ignored, not refused,
    so a long-running `paas logs -f` keeps printing."""

    model_config = ConfigDict(extra="ignore")


class LogEvent(StreamEvent):
    """A line of an app's log, or an error about a host whose logs could not be read."""

    time: str | None = None
    app: str | None = None
    instance: int | str | None = None
    host: str | None = None
    line: str | None = None
    error: str | None = None


class RunEvent(StreamEvent):
    """Output of a one-off run (`stream` + `data`), an error, or its exit status (the end)."""

    stream: str | None = None
    data: str | None = None
    error: str | None = None
    exit: int | None = None
    host: str | None = None


class DataImported(Model):
    host: str
    bytes: int


class AppDeleted(Model):
    """`DELETE /v1/apps/{app}?delete_data=true`: what happened to the data on each host."""

    data: dict[str, str] = Field(default_factory=dict)


# ---- errors -----------------------------------------------------------------------------


class ErrorBody(Model):
    detail: str
