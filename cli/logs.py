"""`paas logs APP [-f] [--host H] [--since 10m] [--lines N] [--health]`: the app's process
output, without the access-log lines of health checks (User-Agent `paas-health/`) unless
--health: the hosts leave them out, and so does this command for hosts that do not yet."""

from __future__ import annotations

import re
import sys
from typing import Any

import click

from cli.api import RegistryClient
from common.names import check_app_name, check_host_name, parse_duration
from common.wire import LogEvent

# C0 controls but tab and newline, DEL, and C1 controls: ESC starts CSI/OSC sequences
# (colours, cursor moves, window titles, OSC 52 clipboard writes), and 0x9b / 0x9d are CSI
# and OSC on their own. Shown as visible escapes, so the sequence's text stays inert.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
HEALTH_CHECK_MARK = "paas-health/"  # the User-Agent of the agents' and HAProxy's checks


def escape_controls(text: str) -> str:
    """An app's output made safe for the operator's terminal: `\x1b]52;c;...` is printed
    as those characters, never acted on."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def format_line(item: LogEvent, *, raw: bool = False) -> str:
    """`2026-11-28T02:30:00.123Z web.12@machine-1: text`; control sequences escaped
    unless `raw`."""
    line = f"{item.time} {item.app}.{item.instance}@{item.host}: {item.line}"
    return line if raw else escape_controls(line)


def register(group: click.Group) -> None:
    @group.command("logs")
    @click.argument("app")
    @click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
    @click.option("--host", help="Only this host's instances.")
    @click.option("--since", help="Only lines of the last 10m, 1h ...")
    @click.option("--lines", "-n", type=click.IntRange(0, 10000), default=100, show_default=True)
    @click.option(
        "--raw", is_flag=True, help="Pass terminal control sequences through (colours, titles...)."
    )
    @click.option(
        "--health",
        "--all",
        "health",
        is_flag=True,
        help="Also the access-log lines of health checks (hidden by default).",
    )
    def logs(
        app: str,
        follow: bool,
        host: str | None,
        since: str | None,
        lines: int,
        raw: bool,
        health: bool,
    ) -> None:
        """Print APP's process logs from every host it runs on, oldest first. Terminal control
        sequences in the output are shown escaped (\\x1b...) unless --raw. Lines logged for
        health checks (User-Agent paas-health/) are left out unless --health."""
        check_app_name(app)
        params: dict[str, Any] = {"lines": lines, "follow": follow}
        if health:
            params["health"] = True
        if host is not None:
            params["host"] = check_host_name(host)
        if since is not None:
            parse_duration(since)
            params["since"] = since
        with RegistryClient.from_login() as api:
            for item in api.logs(app, params):
                if item.error is not None:
                    click.echo(f"warning: {escape_controls(item.error)}", err=True)
                elif item.line is not None:
                    if not health and HEALTH_CHECK_MARK in item.line:
                        continue
                    click.echo(format_line(item, raw=raw))
                    sys.stdout.flush()
