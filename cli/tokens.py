"""`paas tokens`, `paas tokens:create`, `paas tokens:revoke`: API tokens and their scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from cli import output
from cli.api import RegistryClient, dump
from common.names import InvalidName, check_app_name, check_domain, check_token_name


def register(
    group: click.Group, *, json_option: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    @group.command("tokens")
    @json_option
    def tokens(as_json: bool) -> None:
        """List API tokens (never their values)."""
        with RegistryClient.from_login() as api:
            found = dump(api.list_tokens())
        if as_json:
            output.print_json(found)
            return
        output.table(
            None,
            ["ID", "SCOPE", "NAME", "APP", "HOST", "DOMAINS", "CREATED"],
            [
                [
                    t["id"],
                    t["scope"],
                    t["name"] or "",
                    t["app"] or "",
                    t["host"] or "",
                    ",".join(t.get("domains") or []),
                    t["created_at"],
                ]
                for t in found
            ],
        )

    @group.command("tokens:create")
    @click.option("--scope", type=click.Choice(["admin", "deploy"]), required=True)
    @click.option("--app", "app", help="deploy scope: the one app the token may touch.")
    @click.option("--name", help="A label shown by `paas tokens` and in the audit log.")
    @click.option(
        "--domains",
        default="",
        help="deploy scope: comma-separated domains the token may claim for its app, each"
        " with every name under it (default: none, only <app>.<cluster domain>).",
    )
    @json_option
    def tokens_create(
        scope: str, app: str | None, name: str | None, domains: str, as_json: bool
    ) -> None:
        """Create a token; it is printed once and only its hash is kept."""
        if scope == "deploy" and app is None:
            raise click.UsageError("--scope deploy needs --app APP")
        if scope == "admin" and app is not None:
            raise click.UsageError("an admin token is not bound to an app; leave out --app")
        allowed = [d.strip() for d in domains.split(",") if d.strip()]
        if scope == "admin" and allowed:
            raise click.UsageError("an admin token may claim any domain; leave out --domains")
        if app is not None:
            check_app_name(app)
        if name is not None:
            check_token_name(name)
        for domain in allowed:
            try:
                check_domain(domain)
            except InvalidName as exc:
                raise click.UsageError(f"--domains: {exc}") from None
        with RegistryClient.from_login() as api:
            made = dump(api.create_token(scope, app=app, name=name, domains=allowed))
        if as_json:
            output.print_json(made)
            return
        what = f"deploy token for app {app}" if scope == "deploy" else "admin token"
        if allowed:
            what += f" (may claim domains under {', '.join(allowed)})"
        click.echo(f"created {what} #{made['id']}; it is shown only now:", err=True)
        click.echo(made["token"])

    @group.command("tokens:revoke")
    @click.argument("token_id", type=click.IntRange(1))
    def tokens_revoke(token_id: int) -> None:
        """Revoke token ID (see `paas tokens`); it stops working at once."""
        with RegistryClient.from_login() as api:
            api.revoke_token(token_id)
        click.echo(f"revoked token #{token_id}")
