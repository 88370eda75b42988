"""`paas logs APP [-f] [--host H] [--since 10m] [--lines N]`: the app's process output."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli.ops_api import OpsClient
from common.names import check_app_name, check_host_name, parse_duration


def format_line(item: dict[str, Any]) -> str:
    """`2026-11-28T02:30:00.123Z web.12@machine-1: text`."""
    return f"{item['time']} {item['app']}.{item['instance']}@{item['host']}: {item['line']}"


def register(group: click.Group) -> None:
    @group.command("logs")
    @click.argument("app")
    @click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
    @click.option("--host", help="Only this host's instances.")
    @click.option("--since", help="Only lines of the last 10m, 1h ...")
    @click.option("--lines", "-n", type=click.IntRange(0, 10000), default=100, show_default=True)
    def logs(app: str, follow: bool, host: str | None, since: str | None, lines: int) -> None:
        """Print APP's process logs from every host it runs on, oldest first."""
        check_app_name(app)
        params: dict[str, Any] = {"lines": lines, "follow": follow}
        if host is not None:
            params["host"] = check_host_name(host)
        if since is not None:
            parse_duration(since)
            params["since"] = since
        with OpsClient.from_login() as api:
            for item in api.stream("GET", f"/v1/apps/{app}/logs", params=params):
                if "error" in item:
                    click.echo(f"warning: {item['error']}", err=True)
                elif "line" in item:
                    click.echo(format_line(item))
                    sys.stdout.flush()
