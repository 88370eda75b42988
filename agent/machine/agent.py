"""The machine agent: watch desired instances, run them, route them via nginx, report.

One reconcile loop per host. Desired state comes from a blocking query; every instance is
keyed by id and diffed against what runs; acting is idempotent and a failure of one instance
is recorded as its error, never stopping the others. Order in a pass (zero downtime): start
and health-check new instances, render+apply nginx, and stop a departed instance only once
the live nginx config no longer routes to it.

The registry is not needed to keep serving: at start the agent adopts the nginx and the
instances an earlier run left running (see agent/machine/run/runrecords.py) and starts the rest of
the
desired state saved on disk, then joins the registry in the background; an outage only
pauses the watch and the reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx

from agent import procs
from agent.api_server import ApiServer
from agent.errors import AgentError, RegistryCallFailed
from agent.link.client import (
    RegistryClient,
    backoff_delays,
    join_with_retry,
    rejoin,
)
from agent.link.reporter import Reporter
from agent.link.rewatch import unless_rewatched
from agent.machine.adoption import adopt_instances
from agent.machine.api.server import (
    AgentApi,
    DataAccess,
    ReleasePhaseRequest,
    RunTarget,
    UnknownApp,
)
from agent.machine.build.installer import InstalledRelease, Installer, find_uv
from agent.machine.capacity import measure
from agent.machine.health import HealthChecker, check_host, listener_uids
from agent.machine.instances import (
    Instance,
    definition,
    host_report,
    is_web,
    load_desired,
    save_desired,
    snapshot,
)
from agent.machine.proxy import MachineProxy
from agent.machine.run.cgroups import Cgroups, LeafCgroup, Limits
from agent.machine.run.launcher import AppLauncher, instance_env, system_path
from agent.machine.run.logs import LogFollowers, LogStore, collect_forever
from agent.machine.run.ports import PortAllocator
from agent.machine.run.runrecords import (
    RunRecord,
    read_records,
    recorder,
    remove_record,
    write_record,
)
from agent.machine.run.supervisor import Policy, Supervisor, Verdict
from agent.machine.run.uids import AppUsers, let_apps_pass, secure_state_dir
from agent.machine.storage import datadir, disk
from agent.machine.storage.janitor import Janitor
from agent.metrics import INSTANCE_STATES, RENDER_SECONDS
from agent.proxy.render import make_environment, template_dirs
from agent.settings import AgentSettings
from common.wire import DesiredInstance, DesiredState, HostReport

log = logging.getLogger(__name__)

TICK_S = 0.1
# While an instance starts, tick faster: it is routed as soon as its first check passes.
STARTING_TICK_S = 0.03
NGINX_CHECK_S = 1.0
LOG_COLLECT_S = 0.25  # instance logs are stamped at most this late (agent/machine/run/logs.py)
ADOPT_CHECK_S = 5.0  # an adopted instance gets this long to answer before nginx is rendered
# Changes that only nginx or the supervisor's check policy read: applied without a restart.
IN_PLACE_FIELDS = frozenset({"routing", "health_check_timeout_s", "health_threshold"})


def needs_restart(old: DesiredInstance, new: DesiredInstance) -> bool:
    """A changed definition (env, dependencies, command, memory...) needs a new process;
    serve, domains and routing options only need an nginx reload, check settings nothing."""
    a, b = definition(old), definition(new)
    return any(a.get(k) != b.get(k) for k in set(a) | set(b) if k not in IN_PLACE_FIELDS)


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
        self._reported: frozenset[int] = frozenset()  # departed ids reported stopped
        self._watch_index = -1  # the desired index the running watch waits past
        self._rewatch = asyncio.Event()  # a report showed the registry past that index
        self._disk: disk.DiskUsage | None = (
            None  # sent with heartbeats (agent/machine/storage/disk.py)
        )
        # Instance id -> the definition a running restart moves it to (newest wins).
        self._restart_to: dict[int, DesiredInstance] = {}
        # Replaced processes draining and stopping, with the port they free once stopped.
        self._retiring: list[tuple[Supervisor, int | None]] = []

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
                asyncio.create_task(self._registry_loop(stop), name="registry"),
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
        isolated = os.geteuid() == 0
        if not isolated:
            log.warning(
                "the agent does not run as root: apps run as its own user (uid %d), not each"
                " as its own uid, and without cgroup limits",
                os.geteuid(),
            )
        if self.settings.run_as_user is not None:
            log.warning(
                "run_as_user is deprecated and ignored: each app runs as its own uid from"
                " app_uids (%s)",
                self.settings.app_uids,
            )
        secure_state_dir(state_dir, isolated=isolated)
        if isolated:
            # Builds run as the app's uid: it must reach the installer and the interpreter.
            for tool in (find_uv(), sys.executable):
                if tool:
                    let_apps_pass(Path(tool), what="the build tools")
        self.users = AppUsers(state_dir, uid_range=self.settings.app_uid_bounds, isolated=isolated)
        self.cgroups = (
            Cgroups.detect("paas-" + hashlib.sha256(str(state_dir).encode()).hexdigest()[:10])
            if isolated
            else None
        )
        self.client = RegistryClient.for_settings(self.settings, transport=self._transport)
        self.reporter = Reporter(
            self.client,
            self.settings.name,
            build=self.build_report,
            sent=self._report_sent,
            heartbeat_s=self.settings.heartbeat_interval_s,
            index_seen=self._index_seen,
        )
        self.installer = Installer(
            state_dir,
            self.client.download_artifact,
            users=self.users,
            max_unpacked_bytes=self.settings.release_max_mb << 20,
            build_cgroup=self._build_cgroup,
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
        self.ports = PortAllocator(*self.settings.port_bounds)
        self.health = HealthChecker()
        templates = make_environment(template_dirs(self.settings.operator_template_dir))
        self.proxy = MachineProxy(self.settings, templates)
        self.nginx = self.proxy.process
        self.log_store = LogStore(
            state_dir / "logs", max_bytes=self.settings.log_max_bytes, keep=self.settings.log_keep
        )
        self.log_followers = LogFollowers()
        api = AgentApi(
            host_name=self.settings.name,
            token_file=self.settings.host_token_file,
            store=self.log_store,
            followers=self.log_followers,
            run_target=self.run_target,
            run_timeout_s=self.settings.run_timeout_s,
            release_target=self.release_target,
            data=self.data_access,
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
            make_supervisor=self._supervisor,
            ports=self.ports,
            now=time.monotonic(),
            grace_s=self.policy.stop_grace_s,
            app_uids=self.users.allocated_uids(),
        )
        self.instances.update(adopted)
        # Checked before nginx is rendered, so what still answers keeps its route without a
        # gap; a few tries, as one check may time out on a busy host.
        await asyncio.gather(*(self._first_check(inst) for inst in adopted.values()))

    # ---- app users and limits ------------------------------------------------------------

    def _limits(self, memory_mb: int | None) -> Limits:
        return Limits(
            memory_mb=memory_mb,
            pids_max=self.settings.app_pids_max,
            cpu_weight=self.settings.app_cpu_weight,
        )

    def _build_cgroup(self, app: str) -> tuple[Path, ...]:
        if self.cgroups is None:
            return ()
        return self.cgroups.prepare(app, "build", self._limits(self.settings.build_memory_mb))

    def _run_user(self, app: str, memory_mb: int | None) -> procs.AppUser | None:
        """Who one-off and release-phase commands of `app` run as: its uid, in its `run`
        cgroup (the app's pids limit, an instance's memory limit)."""
        user = self.installer.app_user(app)
        if user is None or self.cgroups is None:
            return user
        return user.in_cgroups(self.cgroups.prepare(app, "run", self._limits(memory_mb)))

    def _app_memory(self, app: str) -> int | None:
        return next(
            (i.desired.memory_mb for i in self.instances.values() if i.desired.app == app), None
        )

    async def _first_check(self, inst: Instance) -> None:
        sup, port = inst.supervisor, inst.port
        if sup is None or port is None:
            return
        deadline = time.monotonic() + ADOPT_CHECK_S
        while sup.state == "starting" and time.monotonic() < deadline:
            await self._check(
                sup, port, inst.desired.health_path, inst.desired.domains, inst.desired.app
            )
            if sup.state == "starting":
                await asyncio.sleep(0.1)

    async def _registry_loop(self, stop: asyncio.Event) -> None:
        if await join_with_retry(self.client, self.settings, stop):
            await asyncio.gather(self._watch_loop(), self.reporter.run())

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

    # ---- watch desired state ---------------------------------------------------------------

    async def _watch_loop(self) -> None:
        index = -1  # answer now, even if the registry's index is 0
        delays: Iterator[float] | None = None
        while True:
            started = time.monotonic()
            self._watch_index = index
            try:
                desired = await self._fetch_desired(index)
            except RegistryCallFailed as exc:
                if delays is None:
                    log.warning("registry unreachable, everything keeps running: %s", exc)
                    delays = backoff_delays()
                if exc.status == 401:
                    await rejoin(self.client, self.settings, exc)
                await asyncio.sleep(next(delays))
                continue
            if desired is None:
                log.debug("the registry is past index %d: watching again at once", index)
                continue
            if delays is not None:
                log.info("registry reachable again")
                delays = None
            if desired.index == index:
                if time.monotonic() - started < 1.0:
                    await asyncio.sleep(0.5)  # the registry did not block; do not spin
                continue
            index = desired.index
            await asyncio.to_thread(save_desired, self.settings.state_dir, desired)
            await self.reconcile(desired)

    async def _fetch_desired(self, index: int) -> DesiredState | None:
        """One watch; None when a report showed the registry past `index` first (a watch
        sent while this host was cut off can hang long after the link is back)."""
        return await unless_rewatched(
            self.client.desired(self.settings.name, index=index, wait_s=self.settings.watch_wait_s),
            self._rewatch,
        )

    def _index_seen(self, index: int) -> None:
        if 0 <= self._watch_index < index:
            self._rewatch.set()

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
                inst.task = asyncio.create_task(self._install_and_start(inst))
            elif inst.removing:
                log.info("instance %d is wanted again", iid)
                inst.removing = inst.stop_requested = False
                inst.desired = d
            elif iid in self._restart_to:
                self._restart_to[iid] = d  # the running restart ends on the newest one
            elif needs_restart(inst.desired, d):
                log.info("instance %d changed its definition, restarting it", iid)
                self._restart_to[iid] = d
                inst.task = asyncio.create_task(self._restart(inst))
            else:
                inst.desired = d
                if inst.supervisor is not None:
                    inst.supervisor.policy = self._policy(d)
        for iid, inst in self.instances.items():
            if iid not in wanted and not inst.removing:
                log.info("instance %d of %s left the desired state", iid, inst.desired.app)
                inst.removing = True
        await self.apply_nginx()
        self._stop_departed(time.monotonic())
        self._changed()

    def _over_capacity(self) -> bool:
        """More instances would run here than `max_instances` allows."""
        running = [i for i in self.instances.values() if not i.removing and i.state != "failed"]
        return len(running) > self.settings.max_instances

    def _stop_departed(self, now: float) -> None:
        """Stop departed instances, each once the live nginx config no longer routes to it
        (a refused config keeps them serving); routed ones drain in-flight requests first."""
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

    # ---- install / start ---------------------------------------------------------------

    async def _install_and_start(self, inst: Instance) -> None:
        d = inst.desired
        inst.phase, inst.error = "installing", None
        self._changed()
        try:
            release = await self.installer.install(
                app=d.app, version=d.release, sha256=d.artifact_sha256, app_id=_app_id(d.env)
            )
            if inst.removing:
                inst.phase = "stopped"
                return
            port = None
            if is_web(d):
                port = inst.port if inst.port is not None else self.ports.acquire()
            inst.port = port
            inst.supervisor = self._supervisor(d, release, port)
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

    def _supervisor(
        self, d: DesiredInstance, release: InstalledRelease, port: int | None
    ) -> Supervisor:
        env = self._app_env(d.app, d.env, port=port, venv=release.venv)
        cgroup = None
        if self.cgroups is not None:
            cgroup = LeafCgroup(self.cgroups, d.app, f"i{d.id}", self._limits(d.memory_mb))
        launcher = AppLauncher(
            d.command,
            release,
            env=env,
            log_path=self.settings.state_dir / "logs" / d.app / f"{d.id}.log",
            on_spawn=recorder(self.run_dir, d, release, port),
            user=self.installer.app_user(d.app),
            cgroup=cgroup,
        )
        return Supervisor(f"{d.app}#{d.id}", launcher, policy=self._policy(d))

    def _policy(self, d: DesiredInstance) -> Policy:
        return replace(
            self.policy, start_timeout_s=d.health_timeout_s, unhealthy_after=d.health_threshold
        )

    def _app_env(
        self, app: str, config: dict[str, str], *, port: int | None, venv: Path
    ) -> dict[str, str]:
        folders = self.users.folders(app)
        return instance_env(
            config,
            port=port,
            venv=venv,
            home=folders.home,
            tmp=folders.tmp,
            user=f"app-{app}",
            system_path=system_path(),
            data=datadir.data_dir(folders),
        )

    async def _restart(self, inst: Instance) -> None:
        """Move an instance to its changed definition (`_restart_to`), which may change again
        meanwhile: a desired state that arrives during a restart updates the target instead
        of starting a second restart on the same instance (two of them raced on one
        supervisor, issue 15 item 3).

        A running web instance is replaced side by side, so no request is dropped: the new
        process starts on a new port, nginx switches to it once it passes its check, and
        only then does the old one drain and stop. Anything else (a worker, an instance
        that is not serving) is stopped and started again."""
        iid = inst.desired.id
        try:
            while True:
                target = self._restart_to[iid]
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
            self._restart_to.pop(iid, None)
            self._changed()

    async def _stop_then_start(self, inst: Instance, desired: DesiredInstance) -> None:
        sup = inst.supervisor
        if sup is not None:
            sup.stop(time.monotonic())
            while sup.transition(time.monotonic()) != "stopped":
                await asyncio.sleep(0.05)
        remove_record(self.run_dir, desired.id)
        inst.supervisor, inst.desired = None, desired
        await self._install_and_start(inst)

    async def _replace(self, inst: Instance, desired: DesiredInstance) -> None:
        """Start `desired` beside the running process, switch nginx to it, retire the old."""
        d = desired
        try:
            release = await self.installer.install(
                app=d.app, version=d.release, sha256=d.artifact_sha256, app_id=_app_id(d.env)
            )
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
        new = self._supervisor(d, release, port)
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
                    await self._check(new, port, d.health_path, d.domains, d.app)
                else:
                    await asyncio.sleep(STARTING_TICK_S)
        except BaseException:
            self._retire(new, port, previous)
            raise
        old, old_port = inst.supervisor, inst.port
        inst.supervisor, inst.port, inst.desired = new, port, d
        # The old process stops only once the live config sends nothing new to it.
        while True:
            await self.apply_nginx()
            if inst.removing or self.proxy.routes_port(port):
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
            self._retiring.append((old, old_port))

    def _retire(self, sup: Supervisor, port: int | None, record: RunRecord | None) -> None:
        """Stop a replacement that will not serve; the old process's run record returns."""
        sup.stop(time.monotonic())
        self._retiring.append((sup, port))
        if record is not None:
            write_record(self.run_dir, record)

    def _tick_retiring(self, now: float) -> None:
        """Drive replaced processes to `stopped` (drain, SIGTERM, SIGKILL); free their port."""
        keep: list[tuple[Supervisor, int | None]] = []
        for sup, port in self._retiring:
            if sup.transition(now) == "stopped":
                self.ports.release(port)
            else:
                keep.append((sup, port))
        self._retiring = keep

    # ---- tick: supervise, health-check, route ------------------------------------------------

    async def _tick_loop(self) -> None:
        last_nginx_check = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._tick_timeout())
            self._wake.clear()
            now = time.monotonic()
            for inst in list(self.instances.values()):
                self._tick_instance(inst, now)
            self._tick_retiring(now)
            await self.apply_nginx()
            self._stop_departed(now)
            self._forget_gone()
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
                self._worker_health(sup, now)
            elif sup.health_due(now) and inst.port is not None:
                sup.mark_checked(now)
                d = inst.desired
                inst.health_task = asyncio.create_task(
                    self._check(
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

    def _worker_health(self, sup: Supervisor, now: float) -> None:
        """A worker has no port to check: it is healthy once its process stayed up for
        `worker_up_s`; an exit is seen by the supervisor (restart with backoff, fatal)."""
        if not sup.health_due(now):
            return
        if sup.state != "starting" or now - sup.started_at >= self.settings.worker_up_s:
            sup.record_health(True, now, generation=sup.generation)

    def _listener_is_the_app(self, app: str, port: int, detail: str) -> tuple[bool, str]:
        """Route only to a port that the app's own uid listens on: another app could bind a
        victim's port while it restarts and receive its traffic."""
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

    def _listening(self, app: str | None, port: int) -> bool:
        """Something listens on `port`, and it is `app`'s own uid (when apps have uids)."""
        owners = listener_uids(port)
        uid = self.users.uid_of(app) if app is not None else None
        return bool(owners) and (uid is None or owners == {uid})

    async def _check(
        self,
        sup: Supervisor,
        port: int,
        path: str,
        domains: list[str] | None = None,
        app: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> None:
        """One check of a web instance. Busy is not dead (issue 15 item 1): a refused
        connection is dead at once; a timeout while the process lives and the app's uid
        still listens on the port is "busy" (requests queue in the backlog meanwhile)."""
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
            and await asyncio.to_thread(self._listening, app, port)
        ):
            verdict = "busy"
        if ok and app is not None:
            ok, detail = await asyncio.to_thread(self._listener_is_the_app, app, port, detail)
        sup.record_health(
            ok, time.monotonic(), generation=generation, detail=detail, verdict=verdict
        )
        self._wake.set()

    def _forget_gone(self) -> None:
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

    def _gone_for_good(self, iid: int) -> bool:
        inst = self.instances.get(iid)
        return inst is not None and inst.removing and inst.stop_requested

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

    # ---- disk hygiene (agent/machine/storage/janitor.py)
    # --------------------------------------------------------

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

    # ---- one-off runs ------------------------------------------------------------------------

    async def run_target(self, app: str) -> RunTarget:
        """The environment of `app`'s current release here: the serving instances' release
        if any, else the newest placed one (its artifact, venv and config vars)."""
        candidates = [i.desired for i in self.instances.values() if i.desired.app == app]
        candidates = [d for d in candidates if not self._gone_for_good(d.id)] or candidates
        if not candidates:
            raise UnknownApp(f"app {app} has no instance on host {self.settings.name}")
        d = max(candidates, key=lambda c: (c.serve, c.release))
        try:
            release = await self.installer.install(
                app=d.app, version=d.release, sha256=d.artifact_sha256, app_id=_app_id(d.env)
            )
        except AgentError as exc:
            raise UnknownApp(f"release {d.release} of {app} is not installed here: {exc}") from exc
        env = self._app_env(d.app, d.env, port=None, venv=release.venv)
        user = await asyncio.to_thread(self._run_user, d.app, d.memory_mb)
        return RunTarget(cwd=release.path, env=env, user=user)

    async def release_target(self, app: str, spec: ReleasePhaseRequest) -> RunTarget:
        """Where a release's `release:` command runs: the new release, installed here (the
        instances placed here later reuse it), with the environment the registry sent."""
        try:
            release = await self.installer.install(
                app=app, version=spec.version, sha256=spec.artifact_sha256, app_id=_app_id(spec.env)
            )
        except AgentError as exc:
            raise UnknownApp(
                f"release {spec.version} of {app} could not be installed: {exc}"
            ) from exc
        self.janitor.touch(app, time.monotonic())  # no instance here yet: not gone
        env = self._app_env(app, spec.env, port=None, venv=release.venv)  # not routed
        user = await asyncio.to_thread(self._run_user, app, self._app_memory(app))
        return RunTarget(cwd=release.path, env=env, user=user)

    def data_access(self, app: str) -> DataAccess:
        """What the agent API needs to export, import or delete `app`'s data here."""
        return DataAccess(
            folders=self.users.folders(app),
            user=self.installer.app_user(app),
            state_dir=self.settings.state_dir,
        )

    def _report_sent(self, report: HostReport) -> None:
        """Departed instances reported stopped may now leave the table."""
        gone = {
            r.id for r in report.instances if r.state == "stopped" and self._gone_for_good(r.id)
        }
        self._reported = self._reported | gone


def _app_id(env: dict[str, str]) -> str | None:
    """The app's registry id (the registry sends it as PAAS_APP_ID): data is keyed by it."""
    value = env.get("PAAS_APP_ID")
    return value if value is not None and datadir.valid_app_id(value) else None
