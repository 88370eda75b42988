"""`paas audit [--app APP] [--since 1h]`: who changed what, and when."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from cli import output
from cli.api import RegistryClient, dump
from common.names import check_app_name, parse_duration


def register(
    group: click.Group, *, json_option: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    @group.command("audit")
    @click.option("--app", "app", help="Only calls about this app.")
    @click.option("--since", help="Only the last 10m, 1h, 2d ...")
    @click.option("--limit", type=click.IntRange(1, 5000), default=200, show_default=True)
    @json_option
    def audit(app: str | None, since: str | None, limit: int, as_json: bool) -> None:
        """List the audit log, newest first."""
        if app is not None:
            check_app_name(app)
        if since is not None:
            parse_duration(since)
        with RegistryClient.from_login() as api:
            entries = dump(api.list_audit(app=app, since=since, limit=limit))
        if as_json:
            output.print_json(entries)
            return
        output.table(
            None,
            ["WHEN", "WHO", "CALL", "APP", "WHAT", "RESULT"],
            [
                [
                    e["at"],
                    _who(e),
                    f"{e['method']} {e['route']}",
                    e["app"] or "",
                    e["summary"],
                    e["status"],
                ]
                for e in entries
            ],
        )


def _who(entry: dict[str, Any]) -> str:
    if entry["token_id"] is None:
        return "no token"
    name = f" ({entry['token_name']})" if entry["token_name"] else ""
    return f"{entry['scope']} #{entry['token_id']}{name}"
