"""`paas run APP [--host H] -- CMD ARGS`: a one-off command in the app's environment.

Its stdout and stderr are copied to ours as they come; `paas run` exits with its exit code.
"""

from __future__ import annotations

import sys

import click

from cli.api import RegistryClient
from cli.errors import CliError
from common.names import check_app_name, check_host_name


class RunFailed(CliError):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def register(group: click.Group) -> None:
    @group.command("run", context_settings={"ignore_unknown_options": True})
    @click.argument("app")
    @click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
    @click.option("--host", help="Run on this host (default: one that serves the app).")
    @click.option("--timeout", type=click.FloatRange(1, 86400), help="Kill it after this many s.")
    def run(app: str, argv: tuple[str, ...], host: str | None, timeout: float | None) -> None:
        """Run CMD ARGS on a host in APP's current release environment (put -- before CMD)."""
        check_app_name(app)
        if host is not None:
            check_host_name(host)
        code: int | None = None
        with RegistryClient.from_login() as api:
            for item in api.run(app, list(argv), host=host, timeout_s=timeout):
                if item.data is not None:
                    out = sys.stdout if item.stream == "stdout" else sys.stderr
                    out.write(item.data)
                    out.flush()
                if item.error is not None:
                    click.echo(f"error: {item.error}", err=True)
                if item.exit is not None:
                    code = item.exit
        if code is None:
            raise RunFailed("the run ended without an exit status (connection lost?)", 255)
        click.get_current_context().exit(code)
