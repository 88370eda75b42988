"""The machine agent: watch desired instances, run them, route them via nginx, report.

One reconcile loop per host. Desired state comes from a blocking query; every instance is
keyed by id and diffed against what runs; acting is idempotent and a failure of one instance
is recorded as its error, never stopping the others. Order in a pass (zero downtime): start
and health-check new instances, render+apply nginx, only then stop the ones no longer wanted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from agent import nginx
from agent.config_apply import ConfigApplier
from agent.errors import AgentError, RegistryError, RenderError
from agent.health import HealthChecker
from agent.installer import Installer
from agent.instances import (
    ERROR_MAX,
    Instance,
    definition,
    healthy_ports,
    host_report,
    save_desired,
    snapshot,
)
from agent.launcher import AppLauncher, instance_env, stop_leftovers, system_path
from agent.nginx_process import NginxProcess, default_worker_user
from agent.ports import PortAllocator
from agent.registry_client import RegistryClient, backoff_delays, join_or_load_token
from agent.render import make_environment, template_dirs
from agent.settings import AgentSettings
from agent.supervisor import Policy, Supervisor
from common.wire import DesiredInstance, DesiredState, HostReport

log = logging.getLogger(__name__)

TICK_S = 0.1
# While an instance starts, tick faster: it is routed as soon as its first check passes.
STARTING_TICK_S = 0.03
REPORT_COALESCE_S = 0.01
APPLY_RETRY_S = 10.0


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
        self.policy = policy or Policy()
        self.drain_s = drain_s
        self.instances: dict[int, Instance] = {}
        self.routed: frozenset[int] = frozenset()
        self.applied_index: int | None = None
        self.proxy_error: str | None = None
        self._desired_index = 0
        self._last_view: nginx.NginxView | None = None
        self._last_snapshot: object = None
        self._wake = asyncio.Event()
        self._report_soon = asyncio.Event()
        self._apply_lock = asyncio.Lock()
        self._retry_apply_at = 0.0  # a refused config is retried (e.g. the port was busy)
        self._report_outage = False
        self._reported: frozenset[int] = frozenset()  # departed ids reported stopped

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        state_dir = self.settings.state_dir
        for sub in ("artifacts", "apps", "venvs", "logs"):
            (state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.client = RegistryClient(self.settings.registry_url, transport=self._transport)
        self.installer = Installer(state_dir, self.client.download_artifact)
        self.ports = PortAllocator(*self.settings.port_bounds)
        self.health = HealthChecker()
        self.nginx = NginxProcess(
            state_dir / "nginx", binary=self.settings.nginx_bin, worker_user=default_worker_user()
        )
        self.nginx.prepare()
        self.applier = ConfigApplier(
            self.nginx.conf_dir,
            nginx.MAIN_FILE,
            validate=self.nginx.validate,
            reload=self.nginx.reload,
        )
        self.templates = make_environment(template_dirs(self.settings.template_dir))
        await asyncio.to_thread(stop_leftovers, state_dir / "run", state_dir / "apps")
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.apply_nginx()  # nginx answers (404) from the start
            if not await self._join(stop):
                return
            tasks = [
                asyncio.create_task(self._watch_loop(), name="watch"),
                asyncio.create_task(self._tick_loop(), name="tick"),
                asyncio.create_task(self._report_loop(), name="report"),
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

    async def _join(self, stop: asyncio.Event) -> bool:
        delays = backoff_delays()
        first = True
        while not stop.is_set():
            try:
                await join_or_load_token(self.client, self.settings)
                return True
            except RegistryError as exc:
                if not exc.retryable:
                    raise
                delay = next(delays)
                if first:
                    log.warning("could not join the registry (will keep trying): %s", exc)
                    first = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        return False

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
                self._pid_file(iid).unlink(missing_ok=True)
        if self.instances:
            log.info("stopped %d instance(s)", len(self.instances))
        await asyncio.to_thread(self.nginx.stop, grace_s=5.0)
        await self.health.aclose()
        await self.client.aclose()

    # ---- watch desired state ---------------------------------------------------------------

    async def _watch_loop(self) -> None:
        index = -1  # answer now, even if the registry's index is 0
        delays: Iterator[float] | None = None
        while True:
            try:
                desired = await self.client.desired(
                    self.settings.name, index=index, wait_s=self.settings.watch_wait_s
                )
            except RegistryError as exc:
                if delays is None:
                    log.warning("registry unreachable, everything keeps running: %s", exc)
                    delays = backoff_delays()
                await asyncio.sleep(next(delays))
                continue
            if delays is not None:
                log.info("registry reachable again")
                delays = None
            if desired.index == index:
                continue  # the wait ran out, nothing changed
            index = desired.index
            await asyncio.to_thread(save_desired, self.settings.state_dir, desired)
            await self.reconcile(desired)

    async def reconcile(self, desired: DesiredState) -> None:
        """Diff desired instances (by id) against ours and act; idempotent."""
        self._desired_index = desired.index
        wanted = {d.id: d for d in desired.instances}
        for iid, d in wanted.items():
            inst = self.instances.get(iid)
            if inst is None:
                log.info("instance %d of %s release %d placed here", iid, d.app, d.release)
                inst = self.instances[iid] = Instance(desired=d)
                inst.task = asyncio.create_task(self._install_and_start(inst))
            elif inst.removing:
                log.info("instance %d is wanted again", iid)
                inst.removing = False
                inst.desired = d
            elif definition(inst.desired) != definition(d):
                log.info("instance %d changed its definition, restarting it", iid)
                inst.task = asyncio.create_task(self._restart(inst, d))
            else:
                inst.desired = d
        departing = [i for iid, i in self.instances.items() if iid not in wanted and not i.removing]
        was_routed = {i.desired.id for i in departing if i.desired.id in self.routed}
        for inst in departing:
            inst.removing = True
        await self.apply_nginx()
        now = time.monotonic()
        for inst in departing:
            log.info(
                "instance %d of %s left the desired state, stopping it",
                inst.desired.id,
                inst.desired.app,
            )
            if inst.task is not None and not inst.task.done():
                inst.task.cancel()
            if inst.supervisor is not None:
                drain = self.drain_s if inst.desired.id in was_routed else 0.0
                inst.supervisor.stop(now, drain_s=drain)
            else:
                inst.phase = "stopped"
        self._changed()

    # ---- install / start ---------------------------------------------------------------

    async def _install_and_start(self, inst: Instance) -> None:
        d = inst.desired
        inst.phase, inst.error = "installing", None
        self._changed()
        try:
            release = await self.installer.install(
                app=d.app, version=d.release, sha256=d.artifact_sha256
            )
            if inst.removing:
                inst.phase = "stopped"
                return
            port = inst.port if inst.port is not None else self.ports.acquire()
            inst.port = port
            env = instance_env(
                d.env,
                port=port,
                venv=release.venv,
                home=self.settings.state_dir / "apps" / d.app / "home",
                system_path=system_path(),
            )
            log_path = self.settings.state_dir / "logs" / d.app / f"{d.id}.log"
            launcher = AppLauncher(
                d.command, release, env=env, log_path=log_path, pid_file=self._pid_file(d.id)
            )
            inst.supervisor = Supervisor(f"{d.app}#{d.id}", launcher, policy=self.policy)
            inst.supervisor.start(time.monotonic())
            log.info(
                "instance %d of %s release %d started on port %d", d.id, d.app, d.release, port
            )
        except AgentError as exc:
            log.error("instance %d of %s failed to install: %s", d.id, d.app, exc)
            inst.phase, inst.error = "failed", str(exc)
        except Exception as exc:  # a bug must fail this instance only, loudly
            log.exception("instance %d of %s: unexpected error", d.id, d.app)
            inst.phase, inst.error = "failed", f"unexpected agent error: {exc!r}"
        finally:
            self._changed()

    async def _restart(self, inst: Instance, desired: DesiredInstance) -> None:
        if inst.supervisor is not None:
            inst.supervisor.stop(time.monotonic())
            while inst.supervisor.transition(time.monotonic()) != "stopped":
                await asyncio.sleep(0.05)
        inst.supervisor, inst.desired = None, desired
        await self._install_and_start(inst)

    def _pid_file(self, iid: int) -> Path:
        return self.settings.state_dir / "run" / f"{int(iid)}.pid"

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
            await self.apply_nginx()
            self._forget_gone()
            if now - last_nginx_check >= 1.0:
                last_nginx_check = now
                await asyncio.to_thread(self.nginx.ensure_running)
            snapshot = self._snapshot()
            if snapshot != self._last_snapshot:
                self._last_snapshot = snapshot
                self._report_soon.set()

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
            if sup.health_due(now) and inst.port is not None:
                sup.mark_checked(now)
                inst.health_task = asyncio.create_task(
                    self._check(sup, inst.port, inst.desired.health_path, sup.generation)
                )
        except Exception:
            log.exception("supervising instance %d failed", inst.desired.id)

    async def _check(self, sup: Supervisor, port: int, path: str, generation: int) -> None:
        ok, detail = await self.health.check(port, path)
        sup.record_health(ok, time.monotonic(), generation=generation, detail=detail)
        self._wake.set()

    def _forget_gone(self) -> None:
        """Departed instances leave the table once they are stopped and reported so."""
        for iid, inst in list(self.instances.items()):
            if inst.removing and inst.state in ("stopped", "failed") and iid in self._reported:
                self.ports.release(inst.port)
                self._pid_file(iid).unlink(missing_ok=True)
                del self.instances[iid]
                self._reported = self._reported - {iid}

    # ---- nginx -------------------------------------------------------------------------------

    async def apply_nginx(self) -> None:
        """Render from the current desired + observed state; apply only when the view changed."""
        async with self._apply_lock:
            desired = [i.desired for i in self.instances.values() if not i.removing]
            try:
                view = nginx.build_view(
                    desired,
                    healthy_ports(self.instances),
                    address=self.settings.address,
                    port=self.settings.proxy_port,
                    paths=self.nginx.paths(),
                    worker_user=self.nginx.worker_user,
                )
            except RenderError as exc:
                self._set_proxy_error(str(exc))
                return
            if view == self._last_view and (
                self.proxy_error is None or time.monotonic() < self._retry_apply_at
            ):
                return
            self._last_view = view
            self._retry_apply_at = time.monotonic() + APPLY_RETRY_S
            index = self._desired_index
            try:
                files = nginx.render_files(self.templates, view)
                result = await asyncio.to_thread(self.applier.apply, files)
            except RenderError as exc:
                self._set_proxy_error(str(exc))
                return
            if result.applied:
                self.routed = view.routed_ids
                self.applied_index = index
                self.proxy_error = None
            else:
                self._set_proxy_error(result.error or "nginx config refused")
            self._changed()

    def _set_proxy_error(self, message: str) -> None:
        if message != self.proxy_error:
            log.error("nginx config not applied: %s", message)
        self.proxy_error = message[-ERROR_MAX:]
        self._changed()

    # ---- reports -------------------------------------------------------------------------------

    def _departing(self, iid: int) -> bool:
        inst = self.instances.get(iid)
        return inst is not None and inst.removing

    def _changed(self) -> None:
        self._wake.set()

    def _snapshot(self) -> tuple[object, ...]:
        return (snapshot(self.instances, self.routed), self.applied_index, self.proxy_error)

    def build_report(self) -> HostReport:
        return host_report(
            self.instances,
            routed=self.routed,
            applied_index=self.applied_index,
            proxy_error=self.proxy_error,
        )

    async def _report_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._report_soon.wait(), timeout=self.settings.heartbeat_interval_s
                )
            if self._report_soon.is_set():
                await asyncio.sleep(REPORT_COALESCE_S)  # let a burst of changes settle
            self._report_soon.clear()
            await self._send_report()

    async def _send_report(self) -> None:
        report = self.build_report()
        gone = frozenset(
            r.id for r in report.instances if r.state == "stopped" and self._departing(r.id)
        )
        try:
            await self.client.report(self.settings.name, report)
        except RegistryError as exc:
            if not self._report_outage:
                log.warning("could not report to the registry (will keep trying): %s", exc)
                self._report_outage = True
            return
        if self._report_outage:
            log.info("reports reach the registry again")
            self._report_outage = False
        self._reported = self._reported | gone
