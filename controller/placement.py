"""Scheduling as a pure function: (apps, hosts, current placement) -> new placement."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HostSlot:
    name: str
    role: str = "machine"
    state: str = "up"
    labels: Mapping[str, str] = field(default_factory=dict)
    # Capacity as the agent reports it; None: unknown (treated as room for anything).
    free_memory_mb: int | None = None
    load_per_cpu: float | None = None


MIN_FREE_MEMORY_MB = 64  # a host with less is full: no new instance goes there


def fits(host: HostSlot, constraints: Mapping[str, str]) -> bool:
    """An up machine host whose labels match every constraint and that is not full."""
    return (
        host.role == "machine"
        and host.state == "up"
        and all(host.labels.get(k) == v for k, v in constraints.items())
        and (host.free_memory_mb is None or host.free_memory_mb >= MIN_FREE_MEMORY_MB)
    )


def place(
    *,
    apps_wanting: Mapping[str, int],
    hosts: Sequence[HostSlot],
    current: Iterable[tuple[str, str]],
    staying: Mapping[str, Sequence[str]] | None = None,
    constraints: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, list[str]]:
    """Choose a host for every instance each app wants; one host name per instance.

    `current` lists (app, host) for the instances that run now. For each new instance, among
    the machine hosts that are up: first never a second instance of the app on a host while
    another host has none of its new ones, then hosts that already run the app (sticky), then
    the least loaded, then by name so the result is stable. An app gets [] when no host is
    eligible. `staying` names, per app, the hosts of instances that keep running beside the
    new ones (scaling up), so the spread rule counts them too. `constraints` names, per app,
    labels a host must carry (`zone = "a"`); full hosts (little free memory) are skipped, and
    among equals a host with a load per CPU above 1 comes last.
    """
    busy = {h.name: h.load_per_cpu or 0.0 for h in hosts}
    running = list(current)
    load = Counter(host for _app, host in running)
    placed: dict[str, list[str]] = {}
    for app in sorted(apps_wanting):
        count = apps_wanting[app]
        sticky = {host for name, host in running if name == app}
        mine: Counter[str] = Counter((staying or {}).get(app, ()))
        wanted = (constraints or {}).get(app, {})
        eligible = sorted(h.name for h in hosts if fits(h, wanted))
        chosen: list[str] = []
        for _ in range(count if eligible else 0):
            host = min(
                eligible, key=lambda h: (mine[h], h not in sticky, load[h], busy[h] > 1.0, h)
            )
            mine[host] += 1
            load[host] += 1
            chosen.append(host)
        placed[app] = chosen
    return placed
