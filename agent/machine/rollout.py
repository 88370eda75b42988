"""Putting an instance's release into service: install and start a new instance, and move a
running one to a changed definition without dropping a request.

A running web instance is replaced side by side: the new process starts on a new port, nginx
switches to it once it passes its check, and only then does the old one drain and stop.
Anything else (a worker, an instance that is not serving) is stopped and started again. A
failed install or an unhealthy replacement leaves the running process serving, with the
failure recorded on the instance, never stopping the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.errors import AgentError
from agent.machine.checks import InstanceChecks
from agent.machine.instances import Instance, definition, is_web
from agent.machine.run.ports import PortAllocator
from agent.machine.run.runrecords import RunRecord, read_records, remove_record, write_record
from agent.machine.run.supervisor import Supervisor
from agent.machine.spawner import Spawner
from common.wire import DesiredInstance

log = logging.getLogger(__name__)

TICK_S = 0.1
# While an instance starts, tick faster: it is routed as soon as its first check passes.
STARTING_TICK_S = 0.03
# Changes that only nginx or the supervisor's check policy read: applied without a restart.
IN_PLACE_FIELDS = frozenset({"routing", "health_check_timeout_s", "health_threshold"})


def needs_restart(old: DesiredInstance, new: DesiredInstance) -> bool:
    """A changed definition (env, dependencies, command, memory...) needs a new process;
    serve, domains and routing options only need an nginx reload, check settings nothing."""
    a, b = definition(old), definition(new)
    return any(a.get(k) != b.get(k) for k in set(a) | set(b) if k not in IN_PLACE_FIELDS)


class Rollout:
    def __init__(
        self,
        spawner: Spawner,
        *,
        ports: PortAllocator,
        checks: InstanceChecks,
        apply_nginx: Callable[[], Awaitable[None]],
        routes_port: Callable[[int], bool],
        changed: Callable[[], None],
        drain_s: float,
    ) -> None:
        self.spawner = spawner
        self.ports = ports
        self.checks = checks
        self._apply_nginx = apply_nginx
        self._routes_port = routes_port  # the live nginx config sends traffic to this port
        self._changed = changed
        self.drain_s = drain_s
        # Instance id -> the definition a running restart moves it to (newest wins).
        self.restart_to: dict[int, DesiredInstance] = {}
        # Replaced processes draining and stopping, with the port they free once stopped.
        self.retiring: list[tuple[Supervisor, int | None]] = []

    @property
    def run_dir(self) -> Path:
        return self.spawner.run_dir

    # ---- a new instance ------------------------------------------------------------------

    async def install_and_start(self, inst: Instance) -> None:
        d = inst.desired
        inst.phase, inst.error = "installing", None
        self._changed()
        try:
            release = await self.spawner.install(d)
            if inst.removing:
                inst.phase = "stopped"
                return
            port = None
            if is_web(d):
                port = inst.port if inst.port is not None else self.ports.acquire()
            inst.port = port
            inst.supervisor = self.spawner.supervisor(d, release, port)
            inst.supervisor.start(time.monotonic())
            log.info(
                "instance %d (%s) of %s release %d started%s",
                d.id,
                d.process,
                d.app,
                d.release,
                f" on port {port}" if port is not None else "",
            )
        except AgentError as exc:
            log.error("instance %d of %s failed to install: %s", d.id, d.app, exc)
            inst.phase, inst.error = "failed", str(exc)
        except Exception as exc:  # a bug must fail this instance only, loudly
            log.exception("instance %d of %s: unexpected error", d.id, d.app)
            inst.phase, inst.error = "failed", f"unexpected agent error: {exc!r}"
        finally:
            self._changed()

    # ---- a changed definition ------------------------------------------------------------

    async def restart(self, inst: Instance) -> None:
        """Move an instance to its changed definition (`restart_to`), which may change again
        meanwhile: a desired state that arrives during a restart updates the target instead
        of starting a second restart on the same instance (two of them raced on one
        supervisor)."""
        iid = inst.desired.id
        try:
            while True:
                target = self.restart_to[iid]
                if not needs_restart(inst.desired, target):
                    inst.desired = target
                    return
                sup = inst.supervisor
                if (
                    is_web(target)
                    and inst.port is not None
                    and sup is not None
                    and sup.state == "running"
                ):
                    await self._replace(inst, target)
                else:
                    await self._stop_then_start(inst, target)
        finally:
            self.restart_to.pop(iid, None)
            self._changed()

    async def _stop_then_start(self, inst: Instance, desired: DesiredInstance) -> None:
        sup = inst.supervisor
        if sup is not None:
            sup.stop(time.monotonic())
            while sup.transition(time.monotonic()) != "stopped":
                await asyncio.sleep(0.05)
        remove_record(self.run_dir, desired.id)
        inst.supervisor, inst.desired = None, desired
        await self.install_and_start(inst)

    async def _replace(self, inst: Instance, desired: DesiredInstance) -> None:
        """Start `desired` beside the running process, switch nginx to it, retire the old."""
        d = desired
        try:
            release = await self.spawner.install(d)
        except AgentError as exc:
            log.error(
                "instance %d of %s: the changed definition failed to install, the running"
                " process keeps serving: %s",
                d.id,
                d.app,
                exc,
            )
            inst.desired = d
            return
        # The new process's spawn overwrites the instance's run record; a failed replacement
        # puts the old one back, so a restarted agent adopts the process still serving.
        previous = next((r for r in read_records(self.run_dir) if r.instance.id == d.id), None)
        port = self.ports.acquire()
        new = self.spawner.supervisor(d, release, port)
        new.start(time.monotonic())
        log.info("instance %d of %s: replacement started on port %d", d.id, d.app, port)
        try:
            while True:
                now = time.monotonic()
                state = new.transition(now)
                if state == "running":
                    break
                if state == "fatal" or inst.removing:
                    log.error(
                        "instance %d of %s: the replacement did not become healthy, the"
                        " running process keeps serving: %s",
                        d.id,
                        d.app,
                        new.reason,
                    )
                    self._retire(new, port, previous)
                    inst.desired = d
                    return
                if new.health_due(now):
                    new.mark_checked(now)
                    await self.checks.check(new, port, d.health_path, d.domains, d.app)
                else:
                    await asyncio.sleep(STARTING_TICK_S)
        except BaseException:
            self._retire(new, port, previous)
            raise
        old, old_port = inst.supervisor, inst.port
        inst.supervisor, inst.port, inst.desired = new, port, d
        # The old process stops only once the live config sends nothing new to it.
        while True:
            await self._apply_nginx()
            if inst.removing or self._routes_port(port):
                break
            await asyncio.sleep(TICK_S)
        if old is not None:
            log.info(
                "instance %d of %s: switched to port %d, the old process drains",
                d.id,
                d.app,
                port,
            )
            old.stop(time.monotonic(), drain_s=self.drain_s if inst.routed_once else 0.0)
            self.retiring.append((old, old_port))

    def _retire(self, sup: Supervisor, port: int | None, record: RunRecord | None) -> None:
        """Stop a replacement that will not serve; the old process's run record returns."""
        sup.stop(time.monotonic())
        self.retiring.append((sup, port))
        if record is not None:
            write_record(self.run_dir, record)

    def tick_retiring(self, now: float) -> None:
        """Drive replaced processes to `stopped` (drain, SIGTERM, SIGKILL); free their port."""
        keep: list[tuple[Supervisor, int | None]] = []
        for sup, port in self.retiring:
            if sup.transition(now) == "stopped":
                self.ports.release(port)
            else:
                keep.append((sup, port))
        self.retiring = keep
