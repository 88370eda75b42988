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
    # Capacity as the agent reports it (psutil); None: unknown (treated as room for anything).
    free_memory_mb: int | None = None  # available memory now
    load_per_cpu: float | None = None  # 1-minute load average / CPU count
    memory_total_mb: int | None = None


MIN_FREE_MEMORY_MB = 64  # a host with less is full: no new instance goes there


def fits(host: HostSlot, constraints: Mapping[str, str]) -> bool:
    """An up machine host whose labels match every constraint and that is not full."""
    return (
        host.role == "machine"
        and host.state == "up"
        and all(host.labels.get(k) == v for k, v in constraints.items())
        and (host.free_memory_mb is None or host.free_memory_mb >= MIN_FREE_MEMORY_MB)
    )


class MemoryBook:
    """What each host can still take, in MiB: its total minus the memory declared by the
    instances it runs, and no more than it reports available; None when it reports neither."""

    def __init__(
        self, hosts: Sequence[HostSlot], current: Sequence[tuple[str, str]], need: Mapping[str, int]
    ) -> None:
        self._hosts = {h.name: h for h in hosts}
        self._reserved: Counter[str] = Counter()
        for app, host in current:
            self._reserved[host] += need.get(app, 0)
        self._added: Counter[str] = Counter()  # declared memory placed during this call

    def room(self, host: str) -> int | None:
        slot = self._hosts[host]
        limits = []
        if slot.memory_total_mb is not None:
            limits.append(slot.memory_total_mb - self._reserved[host] - self._added[host])
        if slot.free_memory_mb is not None:
            limits.append(slot.free_memory_mb - MIN_FREE_MEMORY_MB - self._added[host])
        return min(limits) if limits else None

    def takes(self, host: str, need_mb: int) -> bool:
        room = self.room(host)
        return need_mb <= 0 or room is None or room >= need_mb

    def add(self, host: str, need_mb: int) -> None:
        self._added[host] += need_mb


def place(
    *,
    apps_wanting: Mapping[str, int],
    hosts: Sequence[HostSlot],
    current: Iterable[tuple[str, str]],
    staying: Mapping[str, Sequence[str]] | None = None,
    constraints: Mapping[str, Mapping[str, str]] | None = None,
    memory_mb: Mapping[str, int] | None = None,
    pinned: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Choose a host for every instance each app wants; one host name per instance.

    `current` lists (app, host) for the instances that run now. For each new instance, among
    the machine hosts that are up: first never a second instance of the app on a host while
    another host has none of its new ones, then hosts that already run the app (sticky), then
    the least loaded (fewest instances; a load per CPU above 1 comes last), then the one with
    the most free memory, then by name so the result is stable. `staying` names, per app, the
    hosts of instances that keep running beside the new ones (scaling up), so the spread rule
    counts them too. `constraints` names, per app, labels a host must carry (`zone = "a"`).
    `memory_mb` is what each app declares per instance (paas.toml `memory = "256M"`): a host
    is never given more than its reported memory holds, and full hosts are skipped. An app
    gets fewer hosts than it wants (maybe []) when no eligible host has room. `pinned` names,
    per app, the one host it may run on (it keeps data there, paas.toml `data = true`): while
    that host is down or full the app gets no host, never another one.
    """
    busy = {h.name: h.load_per_cpu or 0.0 for h in hosts}
    running = list(current)
    need = memory_mb or {}
    book = MemoryBook(hosts, running, need)
    load = Counter(host for _app, host in running)
    placed: dict[str, list[str]] = {}
    for app in sorted(apps_wanting):
        sticky = {host for name, host in running if name == app}
        mine: Counter[str] = Counter((staying or {}).get(app, ()))
        wanted = (constraints or {}).get(app, {})
        eligible = sorted(h.name for h in hosts if fits(h, wanted))
        pin = (pinned or {}).get(app)
        if pin is not None:
            eligible = [h for h in eligible if h == pin]
        app_need = need.get(app, 0)
        chosen: list[str] = []
        for _ in range(apps_wanting[app]):
            roomy = [h for h in eligible if book.takes(h, app_need)]
            if not roomy:
                break
            host = min(
                roomy,
                key=lambda h: (
                    mine[h],
                    h not in sticky,
                    load[h],
                    busy[h] > 1.0,
                    -(book.room(h) or 0),
                    h,
                ),
            )
            mine[host] += 1
            load[host] += 1
            book.add(host, app_need)
            chosen.append(host)
        placed[app] = chosen
    return placed
