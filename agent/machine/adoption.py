"""Taking over what an earlier machine agent run left running (after a crash or SIGKILL).

Every run record whose process is still the very instance we started is adopted: a
supervisor takes it over in `starting`, and one health check routes it again. Instances no
longer in the saved desired state are adopted too, as departing, so they are stopped only
once nginx no longer routes them. Every other process group running from under apps/ is
stopped: never two copies of an instance, never an orphan holding a port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path

from agent.machine.build.installer import InstalledRelease
from agent.machine.instances import Instance
from agent.machine.run.ports import PortAllocator
from agent.machine.run.runrecords import adoptable, read_records, remove_record, stop_strays
from agent.machine.run.supervisor import Supervisor
from common.wire import DesiredInstance

log = logging.getLogger(__name__)

MakeSupervisor = Callable[[DesiredInstance, InstalledRelease, int | None], Supervisor]


def adopt_instances(
    run_dir: Path,
    apps_dir: Path,
    *,
    wanted: Collection[int],
    make_supervisor: MakeSupervisor,
    ports: PortAllocator,
    now: float,
    grace_s: float,
    app_uids: Collection[int] | None = None,
) -> dict[int, Instance]:
    """The adopted instances by id; stops the strays. Blocking: run it in a thread."""
    adopted: dict[int, Instance] = {}
    for record in read_records(run_dir):
        d = record.instance
        handle = adoptable(record)
        if handle is None or d.id in adopted:
            log.info("instance %d (pid %d) is not running any more", d.id, record.pid)
            remove_record(run_dir, d.id)
            continue
        if record.port is not None:
            ports.reserve(record.port)
        release = InstalledRelease(
            app=d.app, version=d.release, path=Path(record.release_dir), venv=Path(record.venv)
        )
        inst = Instance(desired=d, port=record.port, routed_once=True)
        inst.supervisor = make_supervisor(d, release, record.port)
        inst.supervisor.adopt(handle, now)
        if d.id not in wanted:
            log.info("instance %d left the desired state while the agent was away", d.id)
            inst.removing = True
        adopted[d.id] = inst
    keep = {handle_pid for i in adopted.values() if (handle_pid := _pid(i)) is not None}
    stop_strays(apps_dir, keep=keep, app_uids=app_uids, grace_s=grace_s)
    return adopted


def _pid(inst: Instance) -> int | None:
    return inst.supervisor.pid if inst.supervisor is not None else None
