"""Rendering for humans (rich tables) or machines (`--json`): commands pick, never both."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cli.api import dump
from common.wire import App, Host, HostCapacity, InstanceView, Release

if TYPE_CHECKING:  # rich is imported when a table is drawn: `paas deploy` starts faster
    from rich.console import Console


def console() -> Console:
    from rich.console import Console

    # Piped output is not cut to 80 columns: whole lines grep better than wrapped cells.
    width = None if sys.stdout.isatty() else 200
    return Console(highlight=False, soft_wrap=True, width=width)


ERROR_LINES = 12  # of a failed release's reason in `paas status APP`


def print_json(value: Any) -> None:
    print(json.dumps(dump(value), indent=2, sort_keys=False))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    out = Table(title=title, title_justify="left", box=None, header_style="bold")
    for column in columns:
        out.add_column(column)
    for row in rows:  # plain Text: an error such as "[errno 28] ..." is not rich markup
        out.add_row(*(Text("-" if cell is None else str(cell)) for cell in row))
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
        ["VERSION", "STATUS", "STAGE", "DESCRIPTION", "CREATED", "ERROR"],
        [
            [
                f"v{r.version}",
                f"{r.status}, crashing" if r.crashing else r.status,
                r.stage,
                r.description or f"artifact {r.artifact_sha256[:12]}",
                _when(r.created_at),
                _last_line(r.error),
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
        [
            "HOST",
            "ROLE",
            "STATE",
            "ADDRESS",
            "LABELS",
            "INSTANCES",
            "CPUS",
            "MEMORY FREE/TOTAL",
            "LOAD",
            "DISK STATE FREE/TOTAL",
            "HEARTBEAT",
            "PROXY ERROR",
        ],
        [
            [
                h.name,
                h.role,
                h.state,
                f"{h.address}:{h.proxy_port}",
                ",".join(f"{k}={v}" for k, v in sorted(h.labels.items())) or None,
                h.instances,
                *_capacity_cells(h),
                _when(h.last_heartbeat),
                h.proxy_error,
            ]
            for h in hosts
        ],
    )


def _capacity_cells(host: Host) -> list[object]:
    """CPUs, free/total memory and load from the host's last report; blanks before it sends any."""
    capacity = host.capacity
    if capacity is None:
        return [None, None, None, None]
    memory = f"{capacity.memory_available_mb}/{capacity.memory_total_mb} MiB"
    return [capacity.cpu_count, memory, f"{capacity.load_1m:.2f}", _disk_cell(capacity)]


def _disk_cell(capacity: HostCapacity) -> str | None:
    """'412 MiB 70.1/251.9 GiB': what the agent's state folder holds, then free/total."""
    if capacity.disk_total_mb is None or capacity.disk_free_mb is None:
        return None
    gib = 1024
    return (
        f"{capacity.state_disk_mb or 0} MiB"
        f" {capacity.disk_free_mb / gib:.1f}/{capacity.disk_total_mb / gib:.1f} GiB"
    )


def instances_table(instances: Sequence[InstanceView]) -> None:
    if not instances:
        console().print("no instances")
        return
    table(
        None,
        ["ID", "RELEASE", "PROCESS", "HOST", "PORT", "STATE", "ROUTED", "CRASHES", "ERROR"],
        [
            [
                i.id,
                f"v{i.release}",
                i.process,
                i.host,
                i.port,
                i.state,
                "yes" if i.routed else "no",
                i.crashes,
                _last_line(i.error),
            ]
            for i in instances
        ],
    )


def _last_line(text: str | None) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else None


def app_detail(app: App, release: Release | None, latest: Release | None = None) -> None:
    """The app, its serving release and, when newer, the release that is not serving (yet)."""
    c = console()
    c.print(f"[bold]{app.name}[/bold]  instances: {app.instances}  health: {app.health_path}")
    for url in app.urls:
        c.print(f"  {url}")
    if release:
        health = ", crashing" if release.crashing else ""
        c.print(
            f"release v{release.version}: {release.status}{health}, stage {release.stage}", end=""
        )
        c.print(f" ({release.description})" if release.description else "", markup=False)
        for line in _excerpt(release.crashing or release.error):
            c.print(f"  {line}", markup=False)
    else:
        c.print("no active release")
    if latest is not None:
        what = f" ({latest.description})" if latest.description else ""
        c.print(f"latest release v{latest.version}{what}: {latest.status}, stage {latest.stage}")
        for line in _excerpt(latest.error):
            c.print(f"  {line}", markup=False)


def release_detail(release: Release) -> None:
    """`paas releases APP VERSION`: one release, its reason and its release phase's output."""
    c = console()
    status = f"{release.status}, crashing" if release.crashing else release.status
    c.print(f"release v{release.version} of {release.app}: {status}, stage {release.stage}")
    c.print(f"  {release.description or 'artifact ' + release.artifact_sha256[:12]}", markup=False)
    c.print(f"  created {_when(release.created_at)}, artifact {release.artifact_sha256[:12]}")
    if release.min_healthy_s:
        c.print(f"  stays healthy {release.min_healthy_s:g} s before it replaces the previous one")
    for title, text in (
        ("crashing", release.crashing),
        ("error", release.error),
        ("release phase output", release.release_output),
    ):
        if text:
            c.print(f"{title}:")
            for line in text.strip().splitlines():
                c.print(f"  {line}", markup=False)


def _excerpt(error: str | None) -> list[str]:
    """The reason's first line (what failed) and its last lines (the log tail)."""
    lines = (error or "").strip().splitlines()
    if len(lines) <= ERROR_LINES:
        return lines
    return [lines[0], "...", *lines[-(ERROR_LINES - 2) :]]
