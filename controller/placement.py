"""Scheduling as a pure function: (apps, hosts, current placement) -> new placement."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class HostSlot:
    name: str
    role: str = "machine"
    state: str = "up"


def place(
    *,
    apps_wanting: Mapping[str, int],
    hosts: Sequence[HostSlot],
    current: Iterable[tuple[str, str]],
    staying: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[str]]:
    """Choose a host for every instance each app wants; one host name per instance.

    `current` lists (app, host) for the instances that run now. For each new instance, among
    the machine hosts that are up: first never a second instance of the app on a host while
    another host has none of its new ones, then hosts that already run the app (sticky), then
    the least loaded, then by name so the result is stable. An app gets [] when no host is
    eligible. `staying` names, per app, the hosts of instances that keep running beside the
    new ones (scaling up), so the spread rule counts them too.
    """
    eligible = sorted(h.name for h in hosts if h.role == "machine" and h.state == "up")
    running = list(current)
    load = Counter(host for _app, host in running)
    placed: dict[str, list[str]] = {}
    for app in sorted(apps_wanting):
        count = apps_wanting[app]
        sticky = {host for name, host in running if name == app}
        mine: Counter[str] = Counter((staying or {}).get(app, ()))
        chosen: list[str] = []
        for _ in range(count if eligible else 0):
            host = min(eligible, key=lambda h: (mine[h], h not in sticky, load[h], h))
            mine[host] += 1
            load[host] += 1
            chosen.append(host)
        placed[app] = chosen
    return placed
