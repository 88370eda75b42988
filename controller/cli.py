"""`paas-registry`: migrate the schema, initialise the state (tokens printed once), serve the
API, and back up / restore the registry."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from common.fsutil import atomic_write
from controller.server import tls_identity
from controller.server.tls_identity import TlsIdentity
from controller.settings import RegistrySettings
from controller.store import secretbox
from controller.store.db import Database, DatabaseCorrupt, PendingMigrations
from controller.store.schema_head import SchemaTooNew
from controller.store.tokens import has_admin_token, issue_token, revoke_tokens


@click.group()
def main() -> None:
    """The paas service registry."""


STATE_DIR = click.option("--state-dir", type=click.Path(path_type=Path), default=None)
CONFIG = click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True))
TLS_CERT = click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="PEM certificate (chain) to serve HTTPS with (env PAAS_TLS_CERT).",
)
TLS_KEY = click.option(
    "--tls-key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Its PEM private key (env PAAS_TLS_KEY).",
)
DATABASE_URL = click.option(
    "--database-url",
    default=None,
    help="postgresql+psycopg://USER@HOST:PORT/DB or sqlite:///PATH (default: the state dir).",
)


def _tls_identity(settings: RegistrySettings) -> TlsIdentity:
    """The pair from files, else the one kept in (or first made in) the state folder."""
    try:
        return tls_identity.load_or_create(
            settings.state_dir,
            cert_file=settings.tls_cert,
            key_file=settings.tls_key,
            names=[settings.bind_host],
        )
    except tls_identity.TlsIdentityError as exc:
        raise click.ClickException(str(exc)) from exc


def _open_database(settings: RegistrySettings, *, migrate: bool | None = None) -> Database:
    """The database, checked (and migrated when asked or on the embedded default)."""
    db = Database(settings.db_url)
    secretbox.attach(db.engine, settings.keyring())
    try:
        db.prepare(migrate=settings.migrates_on_start if migrate is None else migrate)
    except (PendingMigrations, SchemaTooNew, DatabaseCorrupt) as exc:
        db.dispose()
        raise click.ClickException(str(exc)) from exc
    return db


@main.command()
@STATE_DIR
@DATABASE_URL
@CONFIG
def migrate(state_dir: Path | None, database_url: str | None, config_file: Path | None) -> None:
    """Apply the pending schema revisions (once, before starting registries on a new version)."""
    from controller.store import schema

    settings = RegistrySettings.load(config_file, state_dir=state_dir, database_url=database_url)
    if settings.database_url is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    secretbox.attach(db.engine, settings.keyring())  # the revision sealing old rows needs it
    try:
        missing = schema.pending(db.engine)
        schema.upgrade(db.engine)
    except SchemaTooNew as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
    if missing:
        click.echo(f"applied {len(missing)} revision(s): {', '.join(missing)}")
    else:
        click.echo("the database is up to date")


@main.command()
@STATE_DIR
@DATABASE_URL
@CONFIG
@TLS_CERT
@TLS_KEY
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as JSON.")
@click.option("--rotate", is_flag=True, help="Replace the admin and join tokens.")
def init(
    state_dir: Path | None,
    database_url: str | None,
    config_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    as_json: bool,
    rotate: bool,
) -> None:
    """Create the database and print the admin and join tokens (shown only once) and the
    fingerprint of the registry's TLS certificate (made now unless given as files)."""
    settings = RegistrySettings.load(
        config_file,
        state_dir=state_dir,
        database_url=database_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = _open_database(settings)
    try:
        with db.write() as session:
            if has_admin_token(session) and not rotate:
                raise click.ClickException(
                    f"the registry in {settings.state_dir} is already initialised;"
                    " use --rotate to replace its admin and join tokens"
                )
            tokens = _new_tokens(session)
    finally:
        db.dispose()
    tokens["registry_fingerprint"] = _tls_identity(settings).fingerprint
    if as_json:
        click.echo(json.dumps(tokens))
    else:
        click.echo(f"admin token: {tokens['admin_token']}")
        click.echo(f"join token: {tokens['join_token']}")
        click.echo(f"registry fingerprint: {tokens['registry_fingerprint']}")


def _new_tokens(session: Session) -> dict[str, str]:
    """A new admin and a new join token in place of any old ones: the only time they are
    visible (`init` prints them, `serve --init-tokens` writes them)."""
    revoke_tokens(session, "admin")
    revoke_tokens(session, "join")
    return {
        "admin_token": issue_token(session, "admin"),
        "join_token": issue_token(session, "join"),
    }


@main.command()
@STATE_DIR
@CONFIG
@TLS_CERT
@TLS_KEY
def fingerprint(
    state_dir: Path | None, config_file: Path | None, tls_cert: Path | None, tls_key: Path | None
) -> None:
    """Print the SHA-256 fingerprint of the registry's TLS certificate (what agents and
    `paas login --fingerprint` pin); makes the self-signed one if there is none yet."""
    settings = RegistrySettings.load(
        config_file, state_dir=state_dir, tls_cert=tls_cert, tls_key=tls_key
    )
    click.echo(_tls_identity(settings).fingerprint)


@main.command()
@STATE_DIR
@DATABASE_URL
@click.option("--host", "bind_host", default=None, help="Address to listen on.")
@click.option("--port", "bind_port", type=int, default=None, help="Port to listen on.")
@click.option("--domain", default=None, help="Cluster domain: apps answer on <app>.<domain>.")
@click.option("--public-https-port", type=int, default=None)
@click.option("--service-port-min", type=int, default=None, help="First per-app service port.")
@click.option("--service-port-max", type=int, default=None, help="Last per-app service port.")
@TLS_CERT
@TLS_KEY
@click.option(
    "--insecure-http",
    is_flag=True,
    default=None,
    help="Plain HTTP off loopback: only behind a TLS-terminating proxy on this host.",
)
@click.option(
    "--init-tokens",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A new registry (no admin token yet) issues its admin and join tokens and writes"
    " them to FILE (JSON, mode 0600) before it serves: `init` and `serve` in one process."
    " Ignored once the registry has an admin token.",
)
@CONFIG
def serve(
    state_dir: Path | None,
    database_url: str | None,
    bind_host: str | None,
    bind_port: int | None,
    domain: str | None,
    public_https_port: int | None,
    service_port_min: int | None,
    service_port_max: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure_http: bool | None,
    init_tokens: Path | None,
    config_file: Path | None,
) -> None:
    """Run the registry API: HTTPS off loopback (see --tls-cert), plain HTTP on loopback."""
    import uvicorn

    from controller.api.app import create_app
    from controller.server.tls_serving import TlsBoundedServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = RegistrySettings.load(
        config_file,
        state_dir=state_dir,
        database_url=database_url,
        bind_host=bind_host,
        bind_port=bind_port,
        domain=domain,
        public_https_port=public_https_port,
        service_port_min=service_port_min,
        service_port_max=service_port_max,
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure_http=insecure_http or None,
    )
    identity = _serving_identity(settings)
    try:
        app = create_app(settings)
    except DatabaseCorrupt as exc:
        raise click.ClickException(f"{exc}; restore it from a backup") from exc
    except (PendingMigrations, SchemaTooNew) as exc:
        raise click.ClickException(str(exc)) from exc
    if init_tokens is not None:
        _issue_first_tokens(app.state.ctx.db, init_tokens, identity)
    else:
        with app.state.ctx.db.read() as session:
            if not has_admin_token(session):
                logging.getLogger("paas.registry").warning(
                    "no admin token yet: run 'paas-registry init --state-dir %s'",
                    settings.state_dir,
                )
    options = uvicorn_options(settings, on_overload=app.state.liveness.impaired)
    if identity is not None:
        options.update(ssl_certfile=str(identity.cert_file), ssl_keyfile=str(identity.key_file))
    TlsBoundedServer(
        uvicorn.Config(app, **options),
        notifier=app.state.ctx.notifier,
        handshake_timeout_s=settings.header_timeout_s,
    ).run()


def _issue_first_tokens(db: Database, target: Path, identity: TlsIdentity | None) -> None:
    """`serve --init-tokens`: what `init --json` prints, written to `target` by a registry that
    has no admin token yet. The file is written inside the transaction that issues the
    tokens, so a failed write issues none, and a failed commit is redone by the next start."""
    with db.write() as session:
        if has_admin_token(session):
            return
        tokens = _new_tokens(session)
        if identity is not None:
            tokens["registry_fingerprint"] = identity.fingerprint
        atomic_write(target, json.dumps(tokens), mode=0o600)
    logging.getLogger("paas.registry").info("issued the admin and join tokens into %s", target)


def _serving_identity(settings: RegistrySettings) -> TlsIdentity | None:
    """None: plain HTTP (loopback, or --insecure-http); else the certificate to serve, logged
    with its fingerprint so an operator can hand the pin to agents and the CLI."""
    log = logging.getLogger("paas.registry")
    given = settings.tls_cert is not None or settings.tls_key is not None
    if not given and not tls_identity.needs_tls(settings.bind_host):
        log.info("plain HTTP on loopback %s", settings.bind_host)
        return None
    if not given and settings.insecure_http:
        log.warning(
            "plain HTTP on %s (--insecure-http): tokens cross the network in clear unless a"
            " TLS-terminating proxy on this host is the only way in",
            settings.bind_host,
        )
        return None
    identity = _tls_identity(settings)
    made = "made a self-signed certificate" if identity.generated else "certificate"
    log.info("HTTPS on %s: %s %s", settings.bind_host, made, identity.cert_file)
    click.echo(f"registry fingerprint: {identity.fingerprint}", err=True)
    return identity


def uvicorn_options(
    settings: RegistrySettings, *, on_overload: Callable[[float], None]
) -> dict[str, Any]:
    """How uvicorn serves the registry: limits at the edge (controller/server/edge.py) before any
    work, and watches (blocking up to 30 s) ended by a bounded graceful shutdown."""
    from controller.server.edge import (
        ConnectionGate,
        connection_limits,
        guarded_protocol,
        raise_nofile_limit,
    )

    nofile = raise_nofile_limit()
    limits = connection_limits(
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
        per_client=settings.max_connections_per_client,
        nofile=nofile,
        pending=settings.max_pending_connections,
    )
    gate = ConnectionGate(limits, on_overload=lambda: on_overload(time.monotonic()))
    logging.getLogger("paas.registry").info(
        "edge: at most %d connections (%d per client address, %d waiting for headers),"
        " headers within %g s,"
        " idle keep-alive %g s, open-file limit %d",
        limits.max_connections,
        limits.max_connections_per_client,
        limits.max_pending,
        limits.header_timeout_s,
        settings.keepalive_timeout_s,
        nofile,
    )
    return {
        "host": settings.bind_host,
        "port": settings.bind_port,
        "log_level": "info",
        "http": guarded_protocol(gate),
        "timeout_keep_alive": settings.keepalive_timeout_s,
        "h11_max_incomplete_event_size": 16 * 1024,  # request line + headers
        "timeout_graceful_shutdown": 3,
    }


PASSPHRASE_FILE = click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Seal with the passphrase in this file instead of the registry's secret key.",
)


def _passphrase(path: Path | None) -> bytes | None:
    if path is None:
        return None
    passphrase = path.read_bytes().rstrip(b"\r\n")
    if not passphrase:
        raise click.ClickException(f"{path} holds no passphrase")
    return passphrase


@main.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@STATE_DIR
@DATABASE_URL
@CONFIG
@PASSPHRASE_FILE
def backup(
    file: Path,
    state_dir: Path | None,
    database_url: str | None,
    config_file: Path | None,
    passphrase_file: Path | None,
) -> None:
    """Write the whole registry (rows and artifacts) to FILE, a sealed portable .tar.gz (0600).

    Sealed with the registry's secret key (restore needs its key file) or, with
    --passphrase-file, a passphrase. Safe while the registry runs: rows come from one
    consistent snapshot.
    """
    from controller.context import artifact_store_for
    from controller.store import backup as backups

    settings = RegistrySettings.load(config_file, state_dir=state_dir, database_url=database_url)
    db = _open_database(settings)
    try:
        meta = backups.backup(
            db, artifact_store_for(settings, db), file, passphrase=_passphrase(passphrase_file)
        )
    finally:
        db.dispose()
    rows = sum(meta["rows"].values())
    click.echo(f"backed up {rows} rows and {meta['artifacts']} artifact(s) to {file}")


@main.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@STATE_DIR
@DATABASE_URL
@CONFIG
@click.option("--force", is_flag=True, help="Replace the contents of a database in use.")
@PASSPHRASE_FILE
def restore(
    file: Path,
    state_dir: Path | None,
    database_url: str | None,
    config_file: Path | None,
    force: bool,
    passphrase_file: Path | None,
) -> None:
    """Load a backup FILE into the registry's database (either backend); stop the registries
    first. Refuses a database that holds anything unless --force, and a file the secret key
    (or --passphrase-file) does not open."""
    from controller.context import artifact_store_for
    from controller.store import backup as backups

    settings = RegistrySettings.load(config_file, state_dir=state_dir, database_url=database_url)
    if settings.database_url is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = _open_database(settings, migrate=True)
    try:
        meta = backups.restore(
            db,
            artifact_store_for(settings, db),
            file,
            force=force,
            passphrase=_passphrase(passphrase_file),
        )
    except backups.BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
    rows = sum(meta["rows"].values())
    click.echo(f"restored {rows} rows and {meta['artifacts']} artifact(s) from {file}")


@main.command("rotate-key")
@STATE_DIR
@DATABASE_URL
@CONFIG
@click.option("--drop-old", is_flag=True, help="Then keep only the new key (registries stopped).")
def rotate_key(
    state_dir: Path | None, database_url: str | None, config_file: Path | None, drop_old: bool
) -> None:
    """Seal every secret at rest under a new key; the old keys stay in the key file for reading
    unless --drop-old. Replicas need the new key file (docs/operations.md)."""
    from controller.store import key_rotation

    settings = RegistrySettings.load(config_file, state_dir=state_dir, database_url=database_url)
    db = _open_database(settings)
    keyring = secretbox.keyring_of(db.engine)
    try:
        kid = key_rotation.add_new_key(keyring)
        counts = key_rotation.reseal_all(db, state_dir=settings.state_dir)
        dropped = key_rotation.drop_old_keys(db, keyring) if drop_old else 0
    except secretbox.SecretBoxError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
    click.echo(f"sealed {sum(counts.values())} value(s) under new key {kid} in {keyring.origin}")
    if dropped:
        click.echo(f"dropped {dropped} old key(s)")
