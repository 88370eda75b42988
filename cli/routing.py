"""`paas routing APP`, `paas routing:set APP key=value ...`: typed per-app routing options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError

from cli import output
from cli.api import RegistryClient
from cli.errors import CliError
from common.names import check_app_name
from common.wire import RouteOptions, RouteOptionsUpdate

_BOOLS = {"true": True, "on": True, "yes": True, "false": False, "off": False, "no": False}


def parse_settings(pairs: tuple[str, ...]) -> RouteOptionsUpdate:
    """`max_body_mb=50 websocket=off` -> a checked update; unknown keys and bad values fail."""
    values: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in RouteOptions.model_fields:
            known = ", ".join(RouteOptions.model_fields)
            raise CliError(f"expected KEY=VALUE with KEY one of {known}; got {pair!r}")
        field = RouteOptions.model_fields[key]
        if field.annotation is bool:
            if raw.lower() not in _BOOLS:
                raise CliError(f"{key} takes on/off (or true/false), not {raw!r}")
            values[key] = _BOOLS[raw.lower()]
        else:
            if not raw.isdigit():
                raise CliError(f"{key} takes a whole number, not {raw!r}")
            values[key] = int(raw)
    try:
        return RouteOptionsUpdate.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise CliError(f"{'.'.join(map(str, error['loc']))}: {error['msg']}") from None


def register(
    group: click.Group,
    *,
    client: Callable[[], RegistryClient],
    json_option: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Add the routing verbs to the `paas` group."""

    def show(options: RouteOptions, as_json: bool) -> None:
        if as_json:
            output.print_json(options)
            return
        for key, value in options.model_dump().items():
            shown = ("on" if value else "off") if isinstance(value, bool) else value
            click.echo(f"{key:16} {shown}")

    @group.command("routing")
    @click.argument("app")
    @json_option
    def routing(app: str, as_json: bool) -> None:
        """Show APP's routing options."""
        check_app_name(app)
        with client() as api:
            show(api.get_routing(app), as_json)

    @group.command("routing:set")
    @click.argument("app")
    @click.argument("settings", nargs=-1, required=True)
    @json_option
    def routing_set(app: str, settings: tuple[str, ...], as_json: bool) -> None:
        """Change routing options: max_body_mb=N read_timeout_s=N websocket=on|off
        https_redirect=on|off hsts_max_age_s=N maintenance=on|off."""
        check_app_name(app)
        change = parse_settings(settings)
        with client() as api:
            show(api.update_routing(app, change), as_json)
