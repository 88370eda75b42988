"""The machine's proxy: nginx routing each app's domains to its healthy local instances.

Owns the nginx process and its config folder. Renders from (desired instances, healthy
ports), applies only when the view changed, keeps the last good config when the validator
refuses a render (e.g. a hand-edited operator template) and reports why, and tries a refused
view again every APPLY_RETRY_S so that fixing the template is enough to recover. `routed` is
the truth about the live config: the instances it sends traffic to.

Who may connect: the public listener serves only the cluster's frontends and machine proxies (their
addresses come with the desired state, see `follow`), and a service port some other process
holds is left out of the config and reported (agent/proxy/nginx/service_ports.py) instead of
failing the
reload for every app on the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Mapping

import jinja2

from agent import procs
from agent.errors import RenderError
from agent.machine.instances import ERROR_MAX, Instance, healthy_ports, is_web
from agent.proxy.config_apply import ConfigApplier
from agent.proxy.nginx import service_ports
from agent.proxy.nginx import view as nginx
from agent.proxy.nginx.process import NginxProcess, default_worker_user
from agent.settings import AgentSettings
from common.wire import DesiredState, ServiceRoute

log = logging.getLogger(__name__)

APPLY_RETRY_S = 5.0
UNROUTE_GRACE_S = 1.0  # the frontends drop a host in ~0.1-0.3 s (runtime API, no reload)


class MachineProxy:
    def __init__(self, settings: AgentSettings, templates: jinja2.Environment) -> None:
        self.settings = settings
        self.templates = templates
        self.process = NginxProcess(
            settings.state_dir / "nginx",
            binary=settings.nginx_bin,
            worker_user=default_worker_user(),
        )
        self.process.prepare()
        self.applier = ConfigApplier(
            self.process.conf_dir,
            nginx.MAIN_FILE,
            validate=self.process.validate,
            reload=self.process.reload,
        )
        self.routed: frozenset[int] = frozenset()
        self._live_ports: frozenset[int] = frozenset()  # the app ports the live config routes
        # The cluster's service endpoints (from the desired state) this host listens on.
        self.services: tuple[ServiceRoute, ...] = ()
        # The addresses of the cluster's frontends and machines (see `follow`).
        self.frontends: tuple[str, ...] = ()
        self.machines: tuple[str, ...] = ()
        self.applied_index: int | None = None  # the desired index the live config reflects
        self._refusal: str | None = None  # why the newest view is not live
        self.conflicts: dict[int, str] = {}  # service port -> who holds it (left out)
        self._live_service_ports: frozenset[int] = frozenset()
        self._last_view: nginx.NginxView | None = None
        self._retry_at = 0.0
        self._lock = asyncio.Lock()
        self._leaving_since: dict[int, float] = {}  # departing instance id -> when it left

    def follow(self, desired: DesiredState) -> None:
        """Take what the proxy needs from a new desired state: the service endpoints and the
        addresses allowed to connect (names resolved here, at the edge)."""
        self.services = tuple(desired.services)
        self.frontends = tuple(_resolve(desired.frontends))
        self.machines = tuple(_resolve(desired.machines))

    @property
    def error(self) -> str | None:
        """What the host reports as its proxy error: a refused config and/or the service
        ports left out because another process holds them."""
        parts = [self._refusal] if self._refusal is not None else []
        parts += [self.conflicts[port] for port in sorted(self.conflicts)]
        return "; ".join(parts)[-ERROR_MAX:] if parts else None

    async def apply(self, instances: Mapping[int, Instance], *, index: int) -> bool:
        """Render and apply when the view changed (or a refused one is due for a retry);
        True when `routed`, `applied_index` or `error` changed."""
        async with self._lock:
            healthy = healthy_ports(instances)
            # An app enters this nginx with its first healthy instance: a block for one still
            # starting (it would answer 503) costs a reload that routes nothing, since the
            # frontends send an app to this host only once an instance of it is routed here.
            serving = {
                i.desired.app
                for iid, i in instances.items()
                if not i.removing and (iid in healthy or i.routed_once)
            }
            desired = [
                i.desired
                for i in instances.values()
                if not i.removing and i.desired.app in serving and is_web(i.desired)
            ]
            lingering = self._lingering(instances, serving)
            desired += [instances[iid].desired for iid in lingering]
            reported = self.error
            if any(svc.port not in self._live_service_ports for svc in self.services):
                services = await asyncio.to_thread(self._claimable_services)
            else:
                self.conflicts, services = {}, self.services
            try:
                view = nginx.build_view(
                    desired,
                    {**healthy, **lingering},
                    address=self.settings.address,
                    port=self.settings.proxy_port,
                    paths=self.process.paths(),
                    worker_user=self.process.worker_user,
                    services=services,
                    frontends=self.frontends,
                    machines=self.machines,
                )
            except RenderError as exc:
                return self._refused(str(exc)) or self.error != reported
            if view == self._last_view and (
                self._refusal is None or time.monotonic() < self._retry_at
            ):
                return self.error != reported
            self._last_view = view
            self._retry_at = time.monotonic() + APPLY_RETRY_S
            try:
                files = nginx.render_files(self.templates, view)
                result = await asyncio.to_thread(self.applier.apply, files)
            except (RenderError, OSError) as exc:
                return self._refused(f"nginx config not written: {exc}") or self.error != reported
            if not result.applied:
                return self._refused(result.error or "nginx config refused") or (
                    self.error != reported
                )
            if self._refusal is not None:
                log.info("nginx config applied again; the proxy error is cleared")
            self.routed = view.routed_ids
            self._live_ports = frozenset(p for app in view.apps for p in app.ports)
            self.applied_index = index
            self._refusal = None
            self._live_service_ports = frozenset(svc.port for svc in view.services)
            return True

    def routes_port(self, port: int) -> bool:
        """The live config sends traffic to `port` (a replaced instance's new process)."""
        return port in self._live_ports

    def _claimable_services(self) -> tuple[ServiceRoute, ...]:
        """The service endpoints whose port nginx holds or can take; the others are left
        out and named in `conflicts` (logged once per holder), and checked again next pass."""
        new = [s.port for s in self.services if s.port not in self._live_service_ports]
        taken = service_ports.squatters(new, ours=self._nginx_pids(), known=self.conflicts)
        apps = {s.port: s.name for s in self.services}
        conflicts: dict[int, str] = {}
        for port, holder in taken.items():
            previous = self.conflicts.get(port)
            if previous is not None and holder.pid is None:
                conflicts[port] = previous
                continue
            conflicts[port] = (
                f"service port {port} of app {apps[port]} is held by {holder.describe()};"
                " its listener is left out until the port is free"
            )
            log.error("%s", conflicts[port])
        for port in sorted(set(self.conflicts) - set(conflicts)):
            if port in apps:
                log.info("service port %d of app %s is free again", port, apps[port])
        self.conflicts = conflicts
        return tuple(s for s in self.services if s.port not in conflicts)

    def _nginx_pids(self) -> frozenset[int]:
        master = self.process.pid
        if master is None:
            return frozenset()
        children = procs.children(master, recursive=True)
        return frozenset({master, *(child.pid for child in children)})

    def _lingering(self, instances: Mapping[int, Instance], serving: set[str]) -> dict[int, int]:
        """{id: port} of departing instances still routed for UNROUTE_GRACE_S: the last ones
        of their app here (scaled down, moved). The registry drops this host from the routing
        table at the same index, so the grace covers the frontends applying it; without it
        their requests would meet this nginx's "no app here" 404 meanwhile."""
        now = time.monotonic()
        for iid, inst in instances.items():
            if inst.removing:
                self._leaving_since.setdefault(iid, now)
        for iid in [i for i in self._leaving_since if i not in instances]:
            del self._leaving_since[iid]
        return {
            iid: inst.port
            for iid, inst in instances.items()
            if inst.removing
            and inst.routed_once
            and inst.port is not None
            and inst.state == "running"
            and inst.desired.app not in serving
            and now - self._leaving_since.get(iid, now) < UNROUTE_GRACE_S
        }

    def _refused(self, message: str) -> bool:
        message = message[-ERROR_MAX:]
        if message == self._refusal:
            return False
        log.error("nginx config not applied, the last good one stays live: %s", message)
        self._refusal = message
        return True

    def adopt(self) -> bool:
        return self.process.adopt()

    def ensure_running(self) -> bool:
        return self.process.ensure_running()

    def stop(self, *, grace_s: float) -> None:
        self.process.stop(grace_s=grace_s)


def _resolve(addresses: Iterable[str]) -> list[str]:
    """IP addresses for `addresses` (IPs as they are, DNS names looked up; an unresolvable
    name is logged and left out: that host is not served until it resolves)."""
    result: list[str] = []
    for address in addresses:
        try:
            result.append(str(ipaddress.ip_address(address)))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            log.error("cannot resolve proxy client %s, not served: %s", address, exc)
            continue
        result += sorted({str(info[4][0]) for info in infos})
    return sorted(set(result))
