"""`paas config`, `config:get`, `config:set`, `config:unset`: an app's config vars.

Every change is a new release (same code, new config snapshot), followed like a deploy: the
previous release serves until the new one passes its health check. Secret values are shown
as ******** unless `--reveal` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from cli import output
from cli.api import RegistryClient
from cli.deploy import Deployer
from cli.errors import CliError
from cli.plan import config_plan
from common.names import InvalidName, check_app_name, check_env_key, check_env_value
from common.wire import ConfigUpdate


def parse_assignments(pairs: tuple[str, ...]) -> dict[str, str]:
    """`KEY=VALUE` arguments -> {KEY: VALUE}; the value is everything after the first `=`."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"expected KEY=VALUE, got {pair!r}")
        try:
            check_env_key(key)
            check_env_value(value)
        except InvalidName as exc:
            raise CliError(str(exc)) from exc
        result[key] = value
    return result


def register(
    group: click.Group,
    *,
    client: Callable[[], RegistryClient],
    json_option: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Add the config verbs to the `paas` group (client and --json come from cli.main)."""

    def apply(app: str, update: ConfigUpdate, *, plan: bool, timeout: float) -> None:
        with client() as api:
            if plan:
                for line in config_plan(api, app, update) or ["environment unchanged"]:
                    click.echo(line)
                return
            result = api.update_config(app, update)
            if result.release is None:
                click.echo(f"config of {app} saved; it applies from the next deploy")
                return
            Deployer(api, click.echo).follow_version(app, result.release, timeout=timeout)

    @group.command("config")
    @click.argument("app")
    @click.option("--reveal", is_flag=True, help="Show secret values in clear.")
    @json_option
    def config_list(app: str, reveal: bool, as_json: bool) -> None:
        """List APP's config vars (secrets redacted)."""
        check_app_name(app)
        with client() as api:
            found = api.get_config(app, reveal=reveal)
        if as_json:
            output.print_json(found)
            return
        for key in sorted(found.vars):
            mark = "  (secret)" if key in found.secret else ""
            click.echo(f"{key}={found.vars[key]!r}{mark}")

    @group.command("config:get")
    @click.argument("app")
    @click.argument("key")
    @click.option("--reveal", is_flag=True, help="Print a secret value in clear.")
    def config_get(app: str, key: str, reveal: bool) -> None:
        """Print the value of KEY exactly (no quoting), for scripts."""
        check_app_name(app)
        check_env_key(key)
        with client() as api:
            found = api.get_config(app, reveal=reveal)
        if key not in found.vars:
            raise CliError(f"{app} has no config var {key}")
        click.echo(found.vars[key])

    @group.command("config:set")
    @click.argument("app")
    @click.argument("pairs", nargs=-1, required=True)
    @click.option("--secret", is_flag=True, help="Mark these keys secret (redacted).")
    @click.option("--plan", is_flag=True, help="Show the env diff without applying it.")
    @click.option("--timeout", type=click.FloatRange(1), default=600.0, show_default=True)
    def config_set(
        app: str, pairs: tuple[str, ...], secret: bool, plan: bool, timeout: float
    ) -> None:
        """Set KEY=VALUE pairs (a new release); values may contain '=', spaces, newlines."""
        check_app_name(app)
        values = parse_assignments(pairs)
        update = ConfigUpdate(set=values, secret=sorted(values) if secret else [])
        apply(app, update, plan=plan, timeout=timeout)

    @group.command("config:unset")
    @click.argument("app")
    @click.argument("keys", nargs=-1, required=True)
    @click.option("--plan", is_flag=True, help="Show the env diff without applying it.")
    @click.option("--timeout", type=click.FloatRange(1), default=600.0, show_default=True)
    def config_unset(app: str, keys: tuple[str, ...], plan: bool, timeout: float) -> None:
        """Remove KEYs (a new release)."""
        check_app_name(app)
        try:
            checked = [check_env_key(k) for k in keys]
        except InvalidName as exc:
            raise CliError(str(exc)) from exc
        apply(app, ConfigUpdate(unset=checked), plan=plan, timeout=timeout)
