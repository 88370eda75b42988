"""`paas hosts:remove`: forget a host, so that a machine whose state was wiped can join again.

A join token only adds new hosts; a name that already joined stays bound to its host until
an admin removes it here (its token stops working and its instances move to other hosts).
"""

from __future__ import annotations

import click

from cli.api import RegistryClient
from common.names import check_host_name


def register(group: click.Group) -> None:
    @group.command("hosts:remove")
    @click.argument("name")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    def hosts_remove(name: str, yes: bool) -> None:
        """Remove host NAME: revoke its token and place its instances on the other hosts."""
        check_host_name(name)
        if not yes:
            click.confirm(f"remove host {name} (its instances move to other hosts)?", abort=True)
        with RegistryClient.from_login() as api:
            api.remove_host(name)
        click.echo(f"removed host {name}; it may join again with the join token")
