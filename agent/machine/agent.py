"""The machine agent: watch desired instances, run them, route them via nginx, report.

One reconcile loop per host. Desired state comes from a blocking query; every instance is
keyed by id and diffed against what runs; acting is idempotent and a failure of one instance
is recorded as its error, never stopping the others. Order in a pass (zero downtime): start
and health-check new instances, render+apply nginx, and stop a departed instance only once
the live nginx config no longer routes to it.

The registry is not needed to keep serving: at start the agent adopts the nginx and the
instances an earlier run left running (see agent/machine/run/runrecords.py) and starts the
rest of the desired state saved on disk, then joins the registry in the background; an
outage only pauses the watch and the reports.

Where the parts live: the link to the registry (join, watch, reports, outages) is shared
with the frontend (agent/link/session.py); installing, starting and replacing instances is
rollout.py; stopping and forgetting departed ones departures.py; health checks checks.py;
the uid, cgroups and environment of app code spawner.py; one-off and release-phase runs
app_runs.py; nginx proxy.py. This module wires them and runs the per-host loops (tick,
disk hygiene, logs, agent API).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx

from agent.api_server import ApiServer
from agent.link.client import RegistryClient
from agent.link.outage import wait_until_set
from agent.link.session import RegistrySession
from agent.machine.adoption import adopt_instances
from agent.machine.api.server import AgentApi
from agent.machine.app_runs import AppRunTargets
from agent.machine.build.installer import Installer
from agent.machine.capacity import measure
from agent.machine.checks import InstanceChecks
from agent.machine.departures import Departures
from agent.machine.health import HealthChecker
from agent.machine.instances import (
    Instance,
    host_report,
    is_web,
    load_desired,
    save_desired,
    snapshot,
)
from agent.machine.proxy import MachineProxy
from agent.machine.rollout import STARTING_TICK_S, TICK_S, Rollout, needs_restart
from agent.machine.run.logs import LogFollowers, LogStore, collect_forever
from agent.machine.run.ports import PortAllocator
from agent.machine.run.runrecords import remove_record
from agent.machine.run.supervisor import Policy
from agent.machine.spawner import AppLimits, Spawner, isolate_apps
from agent.machine.storage import disk
from agent.machine.storage.janitor import Janitor
from agent.metrics import INSTANCE_STATES, RENDER_SECONDS
from agent.proxy.render import make_environment, template_dirs
from agent.settings import AgentSettings
from common.wire import DesiredState, HostReport

log = logging.getLogger(__name__)

NGINX_CHECK_S = 1.0
LOG_COLLECT_S = 0.25  # instance logs are stamped at most this late (agent/machine/run/logs.py)


class MachineAgent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: Policy | None = None,
        drain_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self._transport = transport
        self.policy = policy or Policy()  # start_timeout_s comes from each desired instance
        self.drain_s = drain_s
        self.instances: dict[int, Instance] = {}
        self._desired_index = 0
        self._last_snapshot: object = None
        self._wake = asyncio.Event()
        self._received_index = -1  # the index of the last desired state the watch brought
        self._disk: disk.DiskUsage | None = None  # sent with heartbeats

    @property
    def run_dir(self) -> Path:
        return self.settings.state_dir / "run"

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set, then stop every instance and nginx (SIGTERM semantics).
        A SIGKILLed agent stops nothing: the next run adopts what still runs."""
        stop = stop or asyncio.Event()
        self._setup()
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._start_from_disk()
            tasks = [
                asyncio.create_task(self._tick_loop(), name="tick"),
                asyncio.create_task(self.session.run(stop), name="registry"),
                asyncio.create_task(self.api_server.serve(), name="api"),
                asyncio.create_task(self._disk_loop(), name="disk"),
                asyncio.create_task(
                    collect_forever(
                        self.log_store,
                        self.log_followers,
                        LOG_COLLECT_S,
                        current=lambda: {(i.desired.app, n) for n, i in self.instances.items()},
                    ),
                    name="logs",
                ),
            ]
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._shutdown()

    def _setup(self) -> None:
        state_dir = self.settings.state_dir
        self.users, self.cgroups = isolate_apps(self.settings)
        self.client = RegistryClient.for_settings(self.settings, transport=self._transport)
        limits = AppLimits(self.settings, self.cgroups)
        self.installer = Installer(
            state_dir,
            self.client.download_artifact,
            users=self.users,
            max_unpacked_bytes=self.settings.release_max_mb << 20,
            build_cgroup=limits.build_cgroup,
            package_index=self.settings.package_index,
            min_free_mb=self.settings.min_free_mb,
            min_free_percent=self.settings.min_free_percent,
        )
        self.janitor = Janitor(
            self.installer,
            keep_releases=self.settings.keep_releases,
            venv_min_age_s=self.settings.venv_min_age_s,
            gone_app_s=self.settings.gone_app_s,
        )
        log.info("app builds use %s", self.settings.package_index.describe())
        self.spawner = Spawner(
            self.settings,
            users=self.users,
            limits=limits,
            installer=self.installer,
            policy=self.policy,
            run_dir=self.run_dir,
        )
        self.ports = PortAllocator(*self.settings.port_bounds)
        self.health = HealthChecker()
        self.checks = InstanceChecks(
            self.health, self.users, worker_up_s=self.settings.worker_up_s, checked=self._changed
        )
        templates = make_environment(template_dirs(self.settings.operator_template_dir))
        self.proxy = MachineProxy(self.settings, templates)
        self.nginx = self.proxy.process
        self.departures = Departures(
            self.instances,
            self.proxy,
            ports=self.ports,
            cgroups=self.cgroups,
            run_dir=self.run_dir,
            drain_s=self.drain_s,
        )
        self.session: RegistrySession[DesiredState] = RegistrySession(
            self.client,
            self.settings,
            what="desired",
            fetch=self._fetch_desired,
            apply=self._desired_arrived,
            start_index=-1,  # answer now, even if the registry's index is 0
            meanwhile="everything keeps running",
            build_report=self.build_report,
            report_sent=self.departures.report_sent,
        )
        self.reporter = self.session.reporter
        self.rollout = Rollout(
            self.spawner,
            ports=self.ports,
            checks=self.checks,
            apply_nginx=self.apply_nginx,
            routes_port=self.proxy.routes_port,
            changed=self._changed,
            drain_s=self.drain_s,
        )
        self.log_store = LogStore(
            state_dir / "logs", max_bytes=self.settings.log_max_bytes, keep=self.settings.log_keep
        )
        self.log_followers = LogFollowers()
        self.app_runs = AppRunTargets(
            self.spawner,
            host=self.settings.name,
            instances=self.instances,
            gone_for_good=self.departures.gone_for_good,
            janitor=self.janitor,
        )
        api = AgentApi(
            host_name=self.settings.name,
            token_file=self.settings.host_token_file,
            store=self.log_store,
            followers=self.log_followers,
            run_target=self.app_runs.run_target,
            run_timeout_s=self.settings.run_timeout_s,
            release_target=self.app_runs.release_target,
            data=self.app_runs.data_access,
        )
        self.api_server = ApiServer(api, self.settings.address, self.settings.api_port)
        INSTANCE_STATES.states = lambda: [i.state for i in self.instances.values()]

    async def _start_from_disk(self) -> None:
        """Serve what the last run served before the registry answers: adopt the nginx and
        the instances still running, start the rest of the saved desired state."""
        await asyncio.to_thread(self.proxy.adopt)
        cached = await asyncio.to_thread(load_desired, self.settings.state_dir)
        await self._adopt_instances(cached)
        if cached is not None:
            log.info(
                "starting from the saved desired state (index %d, %d instances)",
                cached.index,
                len(cached.instances),
            )
            await self.reconcile(cached)
        else:
            await self.apply_nginx()  # nginx answers (404) from the start
        await asyncio.to_thread(self.nginx.ensure_running)

    async def _adopt_instances(self, cached: DesiredState | None) -> None:
        adopted = await asyncio.to_thread(
            adopt_instances,
            self.run_dir,
            self.settings.state_dir / "apps",
            wanted={d.id for d in cached.instances} if cached is not None else set(),
            make_supervisor=self.spawner.supervisor,
            ports=self.ports,
            now=time.monotonic(),
            grace_s=self.policy.stop_grace_s,
            app_uids=self.users.allocated_uids(),
        )
        self.instances.update(adopted)
        # Checked before nginx is rendered, so what still answers keeps its route without a
        # gap; a few tries, as one check may time out on a busy host.
        await asyncio.gather(*(self.checks.first_check(inst) for inst in adopted.values()))

    async def _shutdown(self) -> None:
        """Stop every instance (SIGTERM, grace, SIGKILL), then nginx; bounded."""
        now = time.monotonic()
        for inst in self.instances.values():
            if inst.task is not None:
                inst.task.cancel()
            if inst.health_task is not None:
                inst.health_task.cancel()
            if inst.supervisor is not None:
                inst.supervisor.stop(now)
        deadline = now + self.policy.stop_grace_s + 3.0
        while time.monotonic() < deadline:
            sups = [i.supervisor for i in self.instances.values() if i.supervisor is not None]
            if all(s.transition(time.monotonic()) == "stopped" for s in sups):
                break
            await asyncio.sleep(0.05)
        for iid, inst in self.instances.items():
            if inst.supervisor is None or inst.supervisor.state == "stopped":
                remove_record(self.run_dir, iid)
        if self.instances:
            log.info("stopped %d instance(s)", len(self.instances))
        if self.cgroups is not None:
            self.cgroups.cleanup()  # ends what escaped its instance's stop, then removes them
        await asyncio.to_thread(self.nginx.stop, grace_s=5.0)
        await self.health.aclose()
        await self.client.aclose()

    # ---- desired state (watched by agent/link/session.py) ----------------------------------

    async def _fetch_desired(self, index: int) -> DesiredState:
        return await self.client.desired(
            self.settings.name, index=index, wait_s=self.settings.watch_wait_s
        )

    async def _desired_arrived(self, desired: DesiredState) -> None:
        """Keep each new desired state on disk, then reconcile; a wait that saw no change
        brings the same index back, which needs nothing."""
        if desired.index == self._received_index:
            return
        self._received_index = desired.index
        await asyncio.to_thread(save_desired, self.settings.state_dir, desired)
        await self.reconcile(desired)

    async def reconcile(self, desired: DesiredState) -> None:
        """Diff desired instances (by id) against ours and act; idempotent."""
        self._desired_index = desired.index
        self.proxy.follow(desired)
        wanted = {d.id: d for d in desired.instances}
        for iid, d in wanted.items():
            inst = self.instances.get(iid)
            if inst is None:
                log.info("instance %d of %s release %d placed here", iid, d.app, d.release)
                inst = self.instances[iid] = Instance(desired=d)
                if self._over_capacity():
                    inst.phase = "failed"
                    inst.error = (
                        f"this host runs at most {self.settings.max_instances} instances"
                        " (max_instances)"
                    )
                    log.error("instance %d of %s refused: %s", iid, d.app, inst.error)
                    continue
                inst.task = asyncio.create_task(self.rollout.install_and_start(inst))
            elif inst.removing:
                log.info("instance %d is wanted again", iid)
                inst.removing = inst.stop_requested = False
                inst.desired = d
            elif iid in self.rollout.restart_to:
                self.rollout.restart_to[iid] = d  # the running restart ends on the newest one
            elif needs_restart(inst.desired, d):
                log.info("instance %d changed its definition, restarting it", iid)
                self.rollout.restart_to[iid] = d
                inst.task = asyncio.create_task(self.rollout.restart(inst))
            else:
                inst.desired = d
                if inst.supervisor is not None:
                    inst.supervisor.policy = self.spawner.policy(d)
        for iid, inst in self.instances.items():
            if iid not in wanted and not inst.removing:
                log.info("instance %d of %s left the desired state", iid, inst.desired.app)
                inst.removing = True
        await self.apply_nginx()
        self.departures.stop(time.monotonic())
        self._changed()

    def _over_capacity(self) -> bool:
        """More instances would run here than `max_instances` allows."""
        running = [i for i in self.instances.values() if not i.removing and i.state != "failed"]
        return len(running) > self.settings.max_instances

    # ---- tick: supervise, health-check, route ------------------------------------------------

    async def _tick_loop(self) -> None:
        last_nginx_check = 0.0
        while True:
            await wait_until_set(self._wake, self._tick_timeout())
            self._wake.clear()
            now = time.monotonic()
            for inst in list(self.instances.values()):
                self._tick_instance(inst, now)
            self.rollout.tick_retiring(now)
            await self.apply_nginx()
            self.departures.stop(now)
            self.departures.forget_gone()
            if now - last_nginx_check >= NGINX_CHECK_S:
                last_nginx_check = now
                await asyncio.to_thread(self.nginx.ensure_running)
            snapshot = self._snapshot()
            if snapshot != self._last_snapshot:
                self._last_snapshot = snapshot
                self.reporter.soon()

    def _tick_timeout(self) -> float:
        starting = any(i.state == "starting" for i in self.instances.values())
        return STARTING_TICK_S if starting else TICK_S

    def _tick_instance(self, inst: Instance, now: float) -> None:
        sup = inst.supervisor
        if sup is None:
            return
        try:
            sup.transition(now)
            if not inst.removing and sup.state == "stopped":
                sup.start(now)
            if not is_web(inst.desired):
                self.checks.worker_health(sup, now)
            elif sup.health_due(now) and inst.port is not None:
                sup.mark_checked(now)
                d = inst.desired
                inst.health_task = asyncio.create_task(
                    self.checks.check(
                        sup,
                        inst.port,
                        d.health_path,
                        d.domains,
                        d.app,
                        timeout_s=d.health_check_timeout_s,
                    )
                )
        except Exception:
            log.exception("supervising instance %d failed", inst.desired.id)

    # ---- nginx -------------------------------------------------------------------------------

    async def apply_nginx(self) -> None:
        started = time.perf_counter()
        changed = await self.proxy.apply(self.instances, index=self._desired_index)
        RENDER_SECONDS.observe(time.perf_counter() - started)
        if changed:
            for iid in self.proxy.routed:
                self.instances[iid].routed_once = True
            self._changed()

    # ---- reports -------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._wake.set()

    def _snapshot(self) -> tuple[object, ...]:
        proxy = self.proxy
        return (snapshot(self.instances, proxy.routed), proxy.applied_index, proxy.error)

    def build_report(self) -> HostReport:
        report = host_report(
            self.instances,
            routed=self.proxy.routed,
            applied_index=self.proxy.applied_index,
            proxy_error=self.proxy.error,
        )
        capacity = measure(self._disk)
        return report.model_copy(update={"api_port": self.api_server.port, "capacity": capacity})

    # ---- disk hygiene (agent/machine/storage/janitor.py) -------------------------------------

    async def _disk_loop(self) -> None:
        """Measure the disk and sweep old releases, venvs and artifacts, every disk_check_s."""
        while True:
            try:
                in_use: dict[str, set[tuple[int, str]]] = {}
                for inst in self.instances.values():
                    d = inst.desired
                    in_use.setdefault(d.app, set()).add((d.release, d.artifact_sha256))
                await asyncio.to_thread(self.janitor.sweep, in_use, now=time.monotonic())
                usage = await asyncio.to_thread(disk.measure, self.settings.state_dir)
                if usage != self._disk:
                    self._disk = usage
                    self.reporter.soon()
            except Exception:  # one bad pass must not stop the next, nor the agent
                log.exception("disk hygiene pass failed")
            await asyncio.sleep(self.settings.disk_check_s)
