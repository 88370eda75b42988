"""The machine agent's table of instances: what it knows about each, and how it is reported.

Plain data and pure functions over it; the agent's loops (agent/machine/agent.py) mutate the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.link import statefile
from agent.machine.run.supervisor import Supervisor, wire_state
from common.wire import DesiredInstance, DesiredState, HostReport, InstanceReport, InstanceState

ERROR_MAX = 8000  # reports cap errors at 8192 characters


@dataclass
class Instance:
    """What the agent knows about one desired (or departing) instance."""

    desired: DesiredInstance
    phase: InstanceState = "pending"  # until a supervisor exists (pending/installing/failed)
    error: str | None = None
    port: int | None = None
    supervisor: Supervisor | None = None
    task: asyncio.Task[None] | None = None  # install + start
    health_task: asyncio.Task[None] | None = field(default=None, repr=False)
    removing: bool = False  # left the desired state: stopped once no live config routes it
    stop_requested: bool = False
    routed_once: bool = False  # a live proxy config sent traffic to it (drain before SIGTERM)

    @property
    def state(self) -> InstanceState:
        if self.supervisor is not None:
            return wire_state(self.supervisor.state)
        return self.phase

    @property
    def error_text(self) -> str | None:
        text = self.supervisor.reason if self.supervisor is not None else self.error
        return text[-ERROR_MAX:] if text else None


def definition(d: DesiredInstance) -> dict[str, object]:
    """What needs a restart when it changes (serve and domains only need an nginx reload)."""
    return d.model_dump(exclude={"serve", "domains"})


def is_web(d: DesiredInstance) -> bool:
    """Only web instances get a port, a health check and routes; others are workers."""
    return d.process == "web"


def healthy_ports(instances: Mapping[int, Instance]) -> dict[int, int]:
    """Instance id -> port of the instances that may take traffic (health check passing)."""
    return {
        iid: inst.port
        for iid, inst in instances.items()
        if not inst.removing and inst.state == "running" and inst.port is not None
    }


def snapshot(instances: Mapping[int, Instance], routed: frozenset[int]) -> tuple[object, ...]:
    """What a report would say, comparable by value: a change means "report soon"."""
    return tuple(
        (iid, i.state, i.port, iid in routed, i.error_text) for iid, i in sorted(instances.items())
    )


def host_report(
    instances: Mapping[int, Instance],
    *,
    routed: frozenset[int],
    applied_index: int | None,
    proxy_error: str | None,
) -> HostReport:
    return HostReport(
        instances=[
            InstanceReport(
                id=iid,
                # A departing instance that had failed is simply out of service now.
                state="stopped" if inst.removing and inst.state == "failed" else inst.state,
                port=inst.port,
                # The truth about the live nginx config: a departing instance stays routed until
                # a config without it is live, so the host never looks empty mid-switch.
                routed=iid in routed,
                error=inst.error_text,
            )
            for iid, inst in sorted(instances.items())
        ],
        applied_index=applied_index,
        proxy_error=proxy_error[-ERROR_MAX:] if proxy_error else None,
    )


def load_desired(state_dir: Path) -> DesiredState | None:
    """The desired state saved by the last run (None when there is none or it is unreadable)."""
    return statefile.load(state_dir / "desired.json", DesiredState)


def save_desired(state_dir: Path, desired: DesiredState) -> None:
    """state_dir/desired.json, atomically and 0600 (config vars hold secrets)."""
    statefile.save(state_dir / "desired.json", desired)
