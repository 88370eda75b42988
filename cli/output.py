"""Rendering for humans (rich tables) or machines (`--json`): commands pick, never both."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cli.api import dump
from common.wire import App, Host, InstanceView, Release

if TYPE_CHECKING:  # rich is imported when a table is drawn: `paas deploy` starts faster
    from rich.console import Console


def console() -> Console:
    from rich.console import Console

    # Piped output is not cut to 80 columns: whole lines grep better than wrapped cells.
    width = None if sys.stdout.isatty() else 200
    return Console(highlight=False, soft_wrap=True, width=width)


def print_json(value: Any) -> None:
    print(json.dumps(dump(value), indent=2, sort_keys=False))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    out = Table(title=title, title_justify="left", box=None, header_style="bold")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*("-" if cell is None else str(cell) for cell in row))
    console().print(out)


def apps_table(apps: Sequence[App]) -> None:
    if not apps:
        console().print("no apps yet: run `paas deploy` in an app folder")
        return
    table(
        None,
        ["APP", "RELEASE", "INSTANCES", "URL"],
        [
            [
                a.name,
                f"v{a.active_release}" if a.active_release else None,
                a.instances,
                a.urls[0] if a.urls else None,
            ]
            for a in apps
        ],
    )


def releases_table(releases: Sequence[Release]) -> None:
    if not releases:
        console().print("no releases yet: run `paas deploy`")
        return
    table(
        None,
        ["VERSION", "STATUS", "STAGE", "ARTIFACT", "CREATED", "ERROR"],
        [
            [
                f"v{r.version}",
                r.status,
                r.stage,
                r.artifact_sha256[:12],
                _when(r.created_at),
                (r.error or "").strip().splitlines()[-1] if r.error else None,
            ]
            for r in releases
        ],
    )


def hosts_table(hosts: Sequence[Host]) -> None:
    if not hosts:
        console().print("no hosts have joined yet")
        return
    table(
        None,
        ["HOST", "ROLE", "STATE", "ADDRESS", "INSTANCES", "HEARTBEAT", "PROXY ERROR"],
        [
            [
                h.name,
                h.role,
                h.state,
                f"{h.address}:{h.proxy_port}",
                h.instances,
                _when(h.last_heartbeat),
                h.proxy_error,
            ]
            for h in hosts
        ],
    )


def instances_table(instances: Sequence[InstanceView]) -> None:
    if not instances:
        console().print("no instances")
        return
    table(
        None,
        ["ID", "RELEASE", "PROCESS", "HOST", "PORT", "STATE", "ROUTED", "ERROR"],
        [
            [
                i.id,
                f"v{i.release}",
                i.process,
                i.host,
                i.port,
                i.state,
                "yes" if i.routed else "no",
                (i.error or "").strip().splitlines()[-1] if i.error else None,
            ]
            for i in instances
        ],
    )


def app_detail(app: App, release: Release | None) -> None:
    c = console()
    c.print(f"[bold]{app.name}[/bold]  instances: {app.instances}  health: {app.health_path}")
    for url in app.urls:
        c.print(f"  {url}")
    if release:
        c.print(f"release v{release.version}: {release.status}, stage {release.stage}")
    else:
        c.print("no active release")
