"""Health checks of this host's instances, with the verdicts the supervisor acts on.

A web instance is checked over HTTP (agent/machine/health.py) and routed only when the port
that answered is listened on by the app's own uid: another app could bind a victim's port
while it restarts and receive its traffic. Busy is not dead: a refused connection is dead at
once; a timeout while the process lives and still listens is "busy" (requests queue in the
backlog meanwhile). A worker has no port: it is healthy once it stayed up `worker_up_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agent.machine.health import HealthChecker, check_host, listener_uids
from agent.machine.instances import Instance
from agent.machine.run.supervisor import Supervisor, Verdict
from agent.machine.run.uids import AppUsers

ADOPT_CHECK_S = 5.0  # an adopted instance gets this long to answer before nginx is rendered


class InstanceChecks:
    def __init__(
        self,
        health: HealthChecker,
        users: AppUsers,
        *,
        worker_up_s: float,
        checked: Callable[[], None],
    ) -> None:
        self.health = health
        self.users = users
        self.worker_up_s = worker_up_s
        self._checked = checked  # wakes the agent's tick: a verdict may change routing

    async def check(
        self,
        sup: Supervisor,
        port: int,
        path: str,
        domains: list[str] | None = None,
        app: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> None:
        """One check of a web instance; its verdict goes to `sup`."""
        generation = sup.generation
        result = await self.health.probe(
            port, path, host=check_host(domains or []), timeout_s=timeout_s
        )
        ok, detail = result.ok, result.detail
        verdict: Verdict = "fail"
        if result.outcome == "refused":
            verdict = "dead"
        elif (
            result.outcome == "timeout"
            and sup.alive
            and await asyncio.to_thread(self.listening, app, port)
        ):
            verdict = "busy"
        if ok and app is not None:
            ok, detail = await asyncio.to_thread(self.listener_is_the_app, app, port, detail)
        sup.record_health(
            ok, time.monotonic(), generation=generation, detail=detail, verdict=verdict
        )
        self._checked()

    async def first_check(self, inst: Instance) -> None:
        """An adopted instance is checked before nginx is rendered, so what still answers
        keeps its route without a gap; a few tries, as one may time out on a busy host."""
        sup, port = inst.supervisor, inst.port
        if sup is None or port is None:
            return
        deadline = time.monotonic() + ADOPT_CHECK_S
        while sup.state == "starting" and time.monotonic() < deadline:
            await self.check(
                sup, port, inst.desired.health_path, inst.desired.domains, inst.desired.app
            )
            if sup.state == "starting":
                await asyncio.sleep(0.1)

    def worker_health(self, sup: Supervisor, now: float) -> None:
        """A worker has no port to check: it is healthy once its process stayed up for
        `worker_up_s`; an exit is seen by the supervisor (restart with backoff, fatal)."""
        if not sup.health_due(now):
            return
        if sup.state != "starting" or now - sup.started_at >= self.worker_up_s:
            sup.record_health(True, now, generation=sup.generation)

    def listener_is_the_app(self, app: str, port: int, detail: str) -> tuple[bool, str]:
        """Route only to a port that the app's own uid listens on."""
        uid = self.users.uid_of(app)
        if uid is None:
            return True, detail
        owners = listener_uids(port)
        if owners == {uid}:
            return True, detail
        return False, (
            f"port {port} is listened on by uid(s) {sorted(owners) or 'none'}, not by {app}'s"
            f" uid {uid}: not routed"
        )

    def listening(self, app: str | None, port: int) -> bool:
        """Something listens on `port`, and it is `app`'s own uid (when apps have uids)."""
        owners = listener_uids(port)
        uid = self.users.uid_of(app) if app is not None else None
        return bool(owners) and (uid is None or owners == {uid})
