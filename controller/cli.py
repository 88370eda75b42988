"""`paas-registry`: initialise the state (tokens printed once) and serve the API."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from controller.auth import has_admin_token, issue_token, revoke_tokens
from controller.db import Database, DatabaseCorrupt
from controller.settings import RegistrySettings


@click.group()
def main() -> None:
    """The paas service registry."""


@main.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as JSON.")
@click.option("--rotate", is_flag=True, help="Replace the admin and join tokens.")
def init(state_dir: Path | None, config_file: Path | None, as_json: bool, rotate: bool) -> None:
    """Create the database and print the admin and join tokens (shown only once)."""
    settings = RegistrySettings.load(config_file, state_dir=state_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    try:
        db.create_all()
        with db.write() as session:
            if has_admin_token(session) and not rotate:
                raise click.ClickException(
                    f"the registry in {settings.state_dir} is already initialised;"
                    " use --rotate to replace its admin and join tokens"
                )
            revoke_tokens(session, "admin")
            revoke_tokens(session, "join")
            admin = issue_token(session, "admin")
            join = issue_token(session, "join")
    finally:
        db.dispose()
    if as_json:
        click.echo(json.dumps({"admin_token": admin, "join_token": join}))
    else:
        click.echo(f"admin token: {admin}")
        click.echo(f"join token: {join}")


@main.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--host", "bind_host", default=None, help="Address to listen on.")
@click.option("--port", "bind_port", type=int, default=None, help="Port to listen on.")
@click.option("--domain", default=None, help="Cluster domain: apps answer on <app>.<domain>.")
@click.option("--public-https-port", type=int, default=None)
@click.option("--service-port-min", type=int, default=None, help="First per-app service port.")
@click.option("--service-port-max", type=int, default=None, help="Last per-app service port.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True))
def serve(
    state_dir: Path | None,
    bind_host: str | None,
    bind_port: int | None,
    domain: str | None,
    public_https_port: int | None,
    service_port_min: int | None,
    service_port_max: int | None,
    config_file: Path | None,
) -> None:
    """Run the registry API."""
    import uvicorn

    from controller.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = RegistrySettings.load(
        config_file,
        state_dir=state_dir,
        bind_host=bind_host,
        bind_port=bind_port,
        domain=domain,
        public_https_port=public_https_port,
        service_port_min=service_port_min,
        service_port_max=service_port_max,
    )
    try:
        app = create_app(settings)
    except DatabaseCorrupt as exc:
        raise click.ClickException(f"{exc}; restore it from a backup") from exc
    with app.state.ctx.db.read() as session:
        if not has_admin_token(session):
            logging.getLogger("paas.registry").warning(
                "no admin token yet: run 'paas-registry init --state-dir %s'", settings.state_dir
            )
    # Watches block for up to 30 s; a bounded graceful shutdown ends them instead of waiting.
    uvicorn.run(
        app,
        host=settings.bind_host,
        port=settings.bind_port,
        log_level="info",
        timeout_graceful_shutdown=3,
    )
