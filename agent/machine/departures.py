"""Instances that left the desired state: each is stopped once the live nginx config no longer
routes to it (a refused config keeps it serving; a routed one drains in-flight requests
first), and leaves the agent's table only once the registry was told it stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.machine.instances import Instance
from agent.machine.proxy import MachineProxy
from agent.machine.run.cgroups import Cgroups
from agent.machine.run.ports import PortAllocator
from agent.machine.run.runrecords import remove_record
from common.wire import HostReport

log = logging.getLogger(__name__)


class Departures:
    def __init__(
        self,
        instances: dict[int, Instance],
        proxy: MachineProxy,
        *,
        ports: PortAllocator,
        cgroups: Cgroups | None,
        run_dir: Path,
        drain_s: float,
    ) -> None:
        self.instances = instances  # the agent's own table: departed ones are removed from it
        self.proxy = proxy
        self.ports = ports
        self.cgroups = cgroups
        self.run_dir = run_dir
        self.drain_s = drain_s
        self._reported: frozenset[int] = frozenset()  # departed ids reported stopped

    def gone_for_good(self, iid: int) -> bool:
        inst = self.instances.get(iid)
        return inst is not None and inst.removing and inst.stop_requested

    def stop(self, now: float) -> None:
        """Stop each departed instance the live config no longer routes to."""
        if self.proxy.applied_index is None:
            return  # until our first config is live, what the live one routes is unknown
        for iid, inst in self.instances.items():
            if not inst.removing or inst.stop_requested or iid in self.proxy.routed:
                continue
            inst.stop_requested = True
            if inst.task is not None and not inst.task.done():
                inst.task.cancel()
            if inst.supervisor is not None:
                log.info("stopping instance %d of %s", iid, inst.desired.app)
                drain = self.drain_s if inst.routed_once else 0.0
                inst.supervisor.stop(now, drain_s=drain)
            else:
                inst.phase = "stopped"

    def report_sent(self, report: HostReport) -> None:
        """Departed instances reported stopped may now leave the table."""
        gone = {r.id for r in report.instances if r.state == "stopped" and self.gone_for_good(r.id)}
        self._reported = self._reported | gone

    def forget_gone(self) -> None:
        """Departed instances leave the table once they are stopped and reported so."""
        for iid, inst in list(self.instances.items()):
            if (
                inst.removing
                and inst.stop_requested
                and inst.state in ("stopped", "failed")
                and iid in self._reported
            ):
                self.ports.release(inst.port)
                remove_record(self.run_dir, iid)
                del self.instances[iid]
                if self.cgroups is not None:
                    app = inst.desired.app
                    self.cgroups.remove(app, f"i{iid}")
                    if not any(i.desired.app == app for i in self.instances.values()):
                        self.cgroups.remove(app)  # its build/run leaves too, once empty
                self._reported = self._reported - {iid}
