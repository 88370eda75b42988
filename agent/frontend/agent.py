"""The frontend agent: watch the routing table, render HAProxy config, apply it, report.

The link to the registry (join, watch, re-watch, reports, outages) is the one both agents
share (agent/link/session.py); this module is what is the frontend's own: each routing table
goes view model -> render -> apply, and each heartbeat restarts HAProxy if it died and
retries a refused config, so a fixed template recovers by itself. A registry outage never
touches HAProxy: it keeps serving the last good config while the link retries. The last
routing table applied is kept in state_dir/routing.json; a restarted agent adopts the
running HAProxy, or starts it from that table, before the registry answers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import grp
import hashlib
import logging
import os
import pwd
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from agent.api_server import ApiServer, metrics_only_app
from agent.errors import AgentError, ProxyError, RenderError, ValidationFailed
from agent.frontend.default_cert import ensure_default_cert
from agent.link import statefile
from agent.link.client import RegistryClient
from agent.link.join import require_a_token
from agent.link.session import RegistrySession
from agent.metrics import RENDER_SECONDS
from agent.proxy.config_apply import ApplyResult, ConfigApplier
from agent.proxy.haproxy import tls_runtime
from agent.proxy.haproxy.process import HaproxyProcess
from agent.proxy.haproxy.runtime import RuntimeApi, runtime_commands
from agent.proxy.haproxy.view import (
    CERT_DIR,
    MAIN_FILE,
    HaproxyView,
    build_view,
    render_files,
    summarize,
)
from agent.proxy.render import make_environment, template_dirs
from agent.settings import AgentSettings
from common.wire import HostReport, RoutingTable

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 8000  # HostReport.proxy_error allows 8192
STOP_GRACE_S = 5.0
RETRY_REFUSED_S = 5.0  # a refused routing table is rendered and tried again this often


class FrontendAgent:
    """Owns one HAProxy and keeps it in line with the registry's routing table."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.client = RegistryClient.for_settings(settings, transport=transport)
        base = settings.state_dir / "haproxy"
        self.conf_dir = base / "conf"
        sockets = socket_dir(base)
        self.admin_socket = sockets / "admin.sock"
        self.process = HaproxyProcess(
            binary=settings.haproxy_bin,
            config=self.conf_dir / MAIN_FILE,
            pid_file=base / "haproxy.pid",
            master_socket=sockets / "master.sock",
            log_file=base / "haproxy.log",
        )
        self.applier = ConfigApplier(
            self.conf_dir, MAIN_FILE, validate=self.process.validate, reload=self.process.reload
        )
        self.env = make_environment(template_dirs(settings.operator_template_dir))
        self.runtime = RuntimeApi(self.admin_socket)
        self._live_view: HaproxyView | None = None  # what the running HAProxy has (slots too)
        self.routing_file = settings.state_dir / "routing.json"
        self.cert_path: Path | None = settings.tls_cert
        self.applied_index: int | None = None
        self.proxy_error: str | None = None
        self._last_table: RoutingTable | None = None  # the table the live config reflects
        self._wanted: RoutingTable | None = None  # the newest table from the registry
        self._retry_at = 0.0
        self._lock = asyncio.Lock()  # one HAProxy operation at a time
        self.session: RegistrySession[RoutingTable] = RegistrySession(
            self.client,
            settings,
            what="routing",
            fetch=self._fetch_routing,
            apply=self._table_arrived,
            start_index=0,
            meanwhile="HAProxy keeps serving the last good config",
            build_report=self._build_report,
            heartbeat=self._heartbeat,
        )

    # ---- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then stop HAProxy and return."""
        try:
            require_a_token(self.settings)  # before HAProxy starts
        except AgentError:
            await self.client.aclose()
            raise
        try:
            self.conf_dir.mkdir(parents=True, exist_ok=True)
            # The config folders hold private keys (certs/*.pem): owner only.
            self.conf_dir.parent.chmod(0o700)
            if self.cert_path is None:
                self.cert_path = ensure_default_cert(
                    self.settings.state_dir, self.settings.domain, now=dt.datetime.now(dt.UTC)
                )
            await self._start_proxy()
            if not await self.session.join(stop):
                return
            api = ApiServer(metrics_only_app(), self.settings.address, self.settings.api_port)
            loops = [
                asyncio.create_task(self.session.follow(stop), name="registry"),
                asyncio.create_task(api.serve(), name="metrics"),
            ]
            stopper = asyncio.create_task(stop.wait(), name="stop")
            done, _ = await asyncio.wait([stopper, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in [stopper, *loops]:
                task.cancel()
            await asyncio.gather(stopper, *loops, return_exceptions=True)
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
        finally:
            await asyncio.to_thread(self.process.close, grace_s=STOP_GRACE_S)
            await self.client.aclose()

    async def _start_proxy(self) -> None:
        """Before the registry answers: adopt the running HAProxy or start it on the last good
        config, then route the saved routing table (identical text: no reload at all)."""
        async with self._lock:
            running = await asyncio.to_thread(self.process.adopt_or_clean)
            if not running:
                running = await self._start_on_live_config()
            saved = await asyncio.to_thread(statefile.load, self.routing_file, RoutingTable)
            if saved is not None:
                log.info("routing the saved routing table (index %d)", saved.index)
                await self._apply_locked(saved)
            elif not running:
                await self._apply_locked(RoutingTable(index=0, apps=[]))
            await self._ensure_running_locked()

    async def _start_on_live_config(self) -> bool:
        live = self.conf_dir / MAIN_FILE
        if not live.is_file():
            return False
        try:
            await asyncio.to_thread(self.process.validate, live)
            await asyncio.to_thread(self.process.start)
        except (ValidationFailed, ProxyError) as exc:
            log.error("the last good config does not start any more: %s", exc)
            return False
        log.info("HAProxy serves the last good config until the registry answers")
        return True

    # ---- the registry link (agent/link/session.py) ---------------------------------------

    async def _fetch_routing(self, index: int) -> RoutingTable:
        return await self.client.routing(index=index, wait_s=self.settings.watch_wait_s)

    async def _table_arrived(self, table: RoutingTable) -> None:
        await self.apply_table(table)

    def _build_report(self) -> HostReport:
        return HostReport(applied_index=self.applied_index, proxy_error=self.proxy_error)

    async def _heartbeat(self) -> None:
        """Before each report: restart HAProxy if it died, retry a refused table."""
        async with self._lock:
            await self._ensure_running_locked()
        await self._retry_refused()

    # ---- reconcile ----------------------------------------------------------------------

    async def _retry_refused(self) -> None:
        """The newest table was refused (e.g. a hand-edited template): try it again now and
        then, so fixing the template is enough to recover."""
        wanted = self._wanted
        if wanted is None or self.proxy_error is None or time.monotonic() < self._retry_at:
            return
        if wanted == self._last_table and self.applied_index == wanted.index:
            return  # applied; the error is about single apps, which a retry does not fix
        self._retry_at = time.monotonic() + RETRY_REFUSED_S
        log.info("trying the refused routing index %d again", wanted.index)
        await self.apply_table(wanted)

    async def apply_table(self, table: RoutingTable) -> ApplyResult | None:
        """Make HAProxy route `table`; record applied_index/proxy_error, wake the reporter."""
        self._wanted = table
        async with self._lock:
            if (
                table == self._last_table
                and self.applied_index == table.index
                and self.process.running()
            ):
                log.debug("routing index %d unchanged, nothing to do", table.index)
                return None
            result = await self._apply_locked(table)
        self.session.reporter.soon()
        return result

    async def _apply_locked(self, table: RoutingTable) -> ApplyResult | None:
        assert self.cert_path is not None
        started = time.perf_counter()
        try:
            built = build_view(
                table,
                bind_address=self.settings.address,
                http_port=self.settings.http_port,
                https_port=self.settings.https_port,
                cert_path=self.cert_path,
                admin_socket=self.admin_socket,
                run_as=worker_identity(),
                previous=self._live_view,
            )
            files = render_files(self.env, built.view)
        except RenderError as exc:
            log.error(
                "routing index %d not rendered, kept the last good config: %s", table.index, exc
            )
            self.proxy_error = str(exc)[:MAX_ERROR_CHARS]
            return None
        for error in built.errors:
            log.error("routing index %d: %s", table.index, error)
        try:
            result = await self._apply_files(built.view, files)
            RENDER_SECONDS.observe(time.perf_counter() - started)
        except OSError as exc:  # disk full, permissions: report it, keep the live config
            log.error("could not write the HAProxy config for index %d: %s", table.index, exc)
            self.proxy_error = f"could not write the HAProxy config: {exc}"[:MAX_ERROR_CHARS]
            return None
        errors = [result.error, *built.errors] if result.error else list(built.errors)
        self.proxy_error = (summarize(errors) or "")[:MAX_ERROR_CHARS] or None
        if result.applied:
            self._live_view = built.view
            await asyncio.to_thread(self._remove_stale_certs, files)
            if table.index:  # index 0 is our own empty start-up config, not the registry's
                self.applied_index = table.index
                if table != self._last_table:
                    await asyncio.to_thread(self._save_table, table)
            self._last_table = table
            log.info("HAProxy routes index %d (%d apps)", table.index, len(built.view.backends))
        return result

    async def _apply_files(self, view: HaproxyView, files: dict[str, str]) -> ApplyResult:
        """Server-set, hosts.map and certificate changes go through the runtime API (no
        reload), then the files are swapped so a later reload keeps them; everything else, or
        a runtime update HAProxy refused, is a full seamless reload. The files are validated
        before anything changes at runtime: a table HAProxy would refuse never serves, not
        even until the rollback reload."""
        commands = None
        swapped = False
        if self._live_view is not None and self.process.running():
            checked = await asyncio.to_thread(self.applier.check, files)
            if not checked.applied:
                return checked
            # Certificates and ACME answers first: a renewal costs no reload.
            live, swapped = await asyncio.to_thread(
                self._swap_tls_at_runtime, self._live_view, view
            )
            commands = runtime_commands(live, view)
        if swapped and commands == []:
            result = await asyncio.to_thread(self.applier.apply, files, reload=False)
            if not result.applied:  # the worker runs what the files no longer say
                await asyncio.to_thread(self._reload_live_config)
            return result
        if commands:
            try:
                await asyncio.to_thread(self.runtime.apply, commands, view)
            except ProxyError as exc:
                log.warning("runtime update refused, reloading instead: %s", exc)
            else:
                log.info("HAProxy servers updated at runtime (%d commands)", len(commands))
                result = await asyncio.to_thread(self.applier.apply, files, reload=False)
                if not result.applied:  # the worker runs what the files no longer say
                    await asyncio.to_thread(self._reload_live_config)
                return result
        return await asyncio.to_thread(self.applier.apply, files)

    def _swap_tls_at_runtime(
        self, live: HaproxyView, view: HaproxyView
    ) -> tuple[HaproxyView, bool]:
        """(the live view after the swap, whether anything was swapped); a refusal leaves
        the live view as it was, so the caller's full reload sets things right."""
        change = tls_runtime.plan(live, view)
        if change is None:
            return live, False
        try:
            tls_runtime.apply(self.admin_socket, change, view)
        except ProxyError as exc:
            log.warning("certificate update at runtime refused, reloading instead: %s", exc)
            return live, False
        log.info(
            "HAProxy certificates and ACME answers updated at runtime (+%d -%d certs,"
            " +%d -%d answers)",
            len(change.add_certs),
            len(change.remove_certs),
            len(change.add_challenges),
            len(change.remove_challenges),
        )
        return tls_runtime.with_tls_of(live, view), True

    def _reload_live_config(self) -> None:
        try:
            self.process.reload()
        except AgentError as exc:
            log.error("could not reload HAProxy on its live config: %s", exc)

    def _remove_stale_certs(self, files: Mapping[str, str]) -> None:
        for folder in (self.conf_dir, self.applier.staging_dir):
            try:
                removed = remove_stale_certs(folder, files)
            except OSError as exc:  # serving is not affected; the next apply tries again
                log.error("could not remove old certificate files in %s: %s", folder, exc)
                continue
            if removed and folder == self.conf_dir:
                log.info("removed %d replaced or deleted certificate file(s)", len(removed))

    def _save_table(self, table: RoutingTable) -> None:
        try:
            statefile.save(self.routing_file, table)
        except OSError as exc:  # serving goes on; only a restart during an outage loses it
            log.error("could not save the routing table to %s: %s", self.routing_file, exc)

    async def _ensure_running_locked(self) -> None:
        if self.process.running():
            return
        log.warning("HAProxy is not running; starting it on the last good config")
        try:
            await asyncio.to_thread(self.process.start)
        except AgentError as exc:
            log.error("could not start HAProxy: %s", exc)
            self.proxy_error = str(exc)[:MAX_ERROR_CHARS]


def remove_stale_certs(conf_dir: Path, files: Mapping[str, str]) -> list[str]:
    """Delete the certificate files (private keys) the applied config no longer names: a
    replaced, renewed or deleted certificate. Called only after HAProxy runs without them."""
    folder = conf_dir / CERT_DIR
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.glob("*.pem")):
        if f"{CERT_DIR}/{path.name}" not in files:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def worker_identity() -> tuple[str, str] | None:
    """When we run as root, HAProxy workers drop to `haproxy` (Debian's user) or `nobody`
    after binding; the master stays root so it can re-bind and read certificates on reload."""
    if os.geteuid() != 0:
        return None
    for user, group in (("haproxy", "haproxy"), ("nobody", "nogroup")):
        try:
            pwd.getpwnam(user)
            grp.getgrnam(group)
        except KeyError:
            continue
        return user, group
    return None


# HAProxy refuses UNIX socket paths longer than this (sun_path minus its own suffixes).
MAX_SOCKET_PATH = 97


def socket_dir(base: Path) -> Path:
    """The folder for HAProxy's sockets: `base` when its paths are short enough, else a
    private folder in /tmp named after `base` (a deep state folder must not stop HAProxy)."""
    if len(str(base / "master.sock")) + len(".tmp") <= MAX_SOCKET_PATH:
        return base
    digest = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"paas-haproxy-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    if short.lstat().st_uid != os.getuid() or not short.is_dir() or short.is_symlink():
        raise AgentError(f"{short} exists but is not a private folder of this user")
    short.chmod(0o700)
    return short
