"""`paas ps APP` and `paas ps:scale APP web=N`: an app's instances and how many it runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

from cli import output
from cli.api import RegistryClient
from common.manifest import MAX_INSTANCES
from common.names import check_app_name

_SCALE_RE = re.compile(r"^(web)=(\d{1,3})$")


def parse_scale(text: str) -> int:
    """`web=N` -> N; only the web process is scaled (it is the one the proxies route to)."""
    match = _SCALE_RE.fullmatch(text.strip())
    if match is None:
        raise click.BadParameter(f"expected web=N (for example web=3), got {text!r}")
    count = int(match.group(2))
    if count > MAX_INSTANCES:
        raise click.BadParameter(f"web={count}: at most {MAX_INSTANCES} instances")
    return count


def register(
    group: click.Group,
    *,
    client: Callable[[], RegistryClient],
    json_option: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Add the process verbs to the `paas` group (client and --json come from cli.main)."""

    @group.command("ps")
    @click.argument("app")
    @json_option
    def ps(app: str, as_json: bool) -> None:
        """List APP's instances with host, port and state."""
        check_app_name(app)
        with client() as api:
            found = api.list_instances(app)
        output.print_json(found) if as_json else output.instances_table(found)

    @group.command("ps:scale")
    @click.argument("app")
    @click.argument("spec")
    @json_option
    def ps_scale(app: str, spec: str, as_json: bool) -> None:
        """Run N instances of APP's web process: paas ps:scale APP web=N."""
        check_app_name(app)
        count = parse_scale(spec)
        with client() as api:
            found = api.scale_app(app, count)
        if as_json:
            output.print_json(found)
            return
        click.echo(f"scaled {app} to web={found.instances}")
