"""`paas ps APP` and `paas ps:scale APP web=N worker=M`: an app's instances and how many
it runs of each Procfile process type."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

from cli import output
from cli.api import RegistryClient
from common.manifest import MAX_INSTANCES
from common.names import InvalidName, check_app_name, check_process_type

_SCALE_RE = re.compile(r"^([^=]+)=(\d{1,3})$")


def parse_scale(specs: tuple[str, ...] | list[str]) -> dict[str, int]:
    """`web=3 worker=2` -> {"web": 3, "worker": 2}; each TYPE a Procfile process type."""
    counts: dict[str, int] = {}
    for text in specs:
        match = _SCALE_RE.fullmatch(text.strip())
        if match is None:
            raise click.BadParameter(f"expected TYPE=N (for example web=3), got {text!r}")
        try:
            kind = check_process_type(match.group(1))
        except InvalidName as exc:
            raise click.BadParameter(str(exc)) from None
        if kind == "release":
            raise click.BadParameter("release runs once per deploy; it cannot be scaled")
        count = int(match.group(2))
        if count > MAX_INSTANCES:
            raise click.BadParameter(f"{kind}={count}: at most {MAX_INSTANCES} instances")
        if kind in counts:
            raise click.BadParameter(f"{kind} is given twice")
        counts[kind] = count
    if not counts:
        raise click.BadParameter("expected at least one TYPE=N (for example web=3)")
    return counts


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
            pinned = None if as_json else api.get_app(app).data_host
        if as_json:
            output.print_json(found)
            return
        if pinned is not None:  # paas.toml data = true: it never moves off its data's host
            click.echo(f"pinned to {pinned} (data)")
        output.instances_table(found)

    @group.command("ps:scale")
    @click.argument("app")
    @click.argument("specs", nargs=-1, required=True)
    @json_option
    def ps_scale(app: str, specs: tuple[str, ...], as_json: bool) -> None:
        """Run N instances of process types: paas ps:scale APP web=3 worker=2 (0 stops a type)."""
        check_app_name(app)
        counts = parse_scale(specs)
        with client() as api:
            found = api.scale_app(app, counts)
        if as_json:
            output.print_json(found)
            return
        shown = {"web": found.instances, **found.process_counts}
        click.echo(f"scaled {app} to " + " ".join(f"{k}={shown[k]}" for k in counts))
