"""`paas domains`, `paas domains:add`, `paas domains:remove`: an app's custom domains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from cli import output
from cli.api import RegistryClient
from common.names import check_app_name, check_domain


def register(
    group: click.Group,
    *,
    client: Callable[[], RegistryClient],
    json_option: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Add the domain verbs to the `paas` group (client and --json come from cli.main)."""

    @group.command("domains")
    @click.argument("app")
    @json_option
    def domains(app: str, as_json: bool) -> None:
        """List the domains APP answers on (the cluster one first)."""
        check_app_name(app)
        with client() as api:
            found = api.get_app(app)
        if as_json:
            output.print_json({"app": found.name, "domains": found.domains, "urls": found.urls})
            return
        for url in found.urls:
            click.echo(url)

    @group.command("domains:add")
    @click.argument("app")
    @click.argument("domain")
    def domains_add(app: str, domain: str) -> None:
        """Route DOMAIN (or a wildcard like '*.example.com') to APP."""
        check_app_name(app)
        check_domain(domain)
        with client() as api:
            api.add_domain(app, domain)
        click.echo(f"added {domain} to {app}")

    @group.command("domains:remove")
    @click.argument("app")
    @click.argument("domain")
    def domains_remove(app: str, domain: str) -> None:
        """Stop routing DOMAIN to APP."""
        check_app_name(app)
        check_domain(domain)
        with client() as api:
            api.remove_domain(app, domain)
        click.echo(f"removed {domain} from {app}")
