"""`paas deploy`: name the app, pack, upload if missing, create a release, follow its stages.

Progress goes through a `report(line)` callable so the command prints it and tests collect it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cli.api import RegistryClient
from cli.errors import ApiError, CliError, DeployFailed, PackError, RegistryUnreachable
from cli.pack import pack
from common.manifest import Manifest, ManifestError, parse_manifest
from common.names import InvalidName, check_app_name
from common.wire import AppCreate, Release

T = TypeVar("T")
STAGES = ("uploaded", "release phase", "installing", "starting", "healthy", "routed")
WATCH_WAIT_S = 30
# While following a release, a registry that stops answering (restart, crash) is retried
# with back-off for this long before `paas deploy` gives up; the deploy itself goes on.
RECONNECT_S = 120.0
RETRY_STATUSES = frozenset({502, 503, 504})  # a proxy in front of a registry that restarts


def retry_delays(*, base: float = 0.5, cap: float = 5.0) -> Iterator[float]:
    delay = base
    while True:
        yield delay
        delay = min(cap, delay * 2)


def read_manifest(root: Path) -> Manifest:
    """`paas.toml`, parsed by the same code the registry uses, so both refuse the same way."""
    file = root / "paas.toml"
    if not file.is_file():
        return Manifest()
    try:
        return parse_manifest(file.read_text())
    except OSError as exc:
        raise PackError(f"cannot read {file}: {exc}") from exc
    except ManifestError as exc:
        raise PackError(f"{exc} (in {file})") from exc


def resolve_app_name(root: Path, override: str | None = None) -> str:
    """`--app`, else paas.toml's name, else the folder name; always strictly validated."""
    if override:
        source, name = "--app", override
    elif (declared := read_manifest(root).name) is not None:
        source, name = "paas.toml", declared
    else:
        source, name = "the folder name", root.resolve().name
    try:
        return check_app_name(name)
    except InvalidName as exc:
        hint = "" if source == "--app" else "; pass --app NAME or set [app] name in paas.toml"
        raise PackError(f"{exc} (from {source}){hint}") from exc


def app_spec(root: Path, name: str) -> AppCreate:
    """What to create when the app does not exist yet, taken from paas.toml."""
    manifest = read_manifest(root)
    spec = AppCreate(name=name, domains=manifest.domains)
    if manifest.health_path is not None:
        spec.health_path = manifest.health_path
    if manifest.instances is not None:
        spec.instances = manifest.instances
    return spec


@dataclass
class DeployResult:
    release: Release
    url: str | None
    created_app: bool


class Deployer:
    """Runs one deploy against a registry; `clock` is injectable so tests own time."""

    def __init__(
        self,
        client: RegistryClient,
        report: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        reconnect_s: float = RECONNECT_S,
    ) -> None:
        self.client = client
        self.report = report
        self.clock = clock
        self.sleep = sleep
        self.reconnect_s = reconnect_s

    def run(self, root: Path, *, app: str | None = None, timeout: float = 600.0) -> DeployResult:
        root = Path(root)
        if not root.is_dir():
            raise PackError(f"{root} is not a folder")
        name = resolve_app_name(root, app)
        spec = app_spec(root, name)
        start = self.clock()
        packed = pack(root)
        for notice in packed.notices:
            self.report(notice)
        try:
            created = False
            if self.client.find_app(name) is None:
                self.client.create_app(spec)
                created = True
                self.report(f"created app {name}")
            size_kib = max(1, packed.size // 1024)
            if self.client.has_artifact(packed.sha256):
                self.report(f"artifact {packed.sha256[:12]} already stored ({size_kib} KiB)")
            else:
                self.client.upload_artifact(packed.sha256, packed.path)
                self.report(f"uploaded artifact {packed.sha256[:12]} ({size_kib} KiB)")
        finally:
            packed.path.unlink(missing_ok=True)
        self.wait_for_dependencies(name, read_manifest(root), deadline=start + timeout)
        release = self.client.create_release(name, packed.sha256)
        self.report(f"release v{release.version} of {name}")
        return self._finish(release, start=start, timeout=timeout, created=created)

    def wait_for_dependencies(self, name: str, manifest: Manifest, *, deadline: float) -> None:
        """Until every existing app of `depends_on` has a healthy, routed instance (a missing
        one is left for the registry to refuse with its message)."""
        for dep in manifest.depends_on or []:
            said = False
            while True:
                try:
                    if self.client.find_app(dep) is None:
                        break
                    instances = self.client.list_instances(dep)
                except ApiError as exc:
                    if exc.status != 403:
                        raise
                    # A deploy token sees its own app only: the registry still checks it.
                    self.report(f"cannot watch dependency {dep} with this token; not waiting")
                    break
                if any(i.state == "running" and i.routed for i in instances):
                    if said:
                        self.report(f"dependency {dep} is healthy")
                    break
                if not said:
                    self.report(f"waiting for dependency {dep} of {name}: no healthy instance yet")
                    said = True
                if self.clock() >= deadline:
                    raise DeployFailed(f"failed: dependency {dep} has no healthy instance")
                self.sleep(1.0)

    def follow_version(self, app: str, version: int, *, timeout: float = 600.0) -> DeployResult:
        """Follow release `version` (started by a config change) like a deploy."""
        start = self.clock()
        release, _ = self.client.watch_release(app, version)
        self.report(f"release v{release.version} of {app}: {release.description}")
        return self._finish(release, start=start, timeout=timeout, created=False)

    def rollback(
        self, app: str, *, version: int | None = None, timeout: float = 600.0
    ) -> DeployResult:
        """Start a release with the code and config of `version` (default: the one before the
        active one) and follow it like a deploy."""
        start = self.clock()
        release = self.client.rollback(app, version)
        self.report(f"release v{release.version} of {app}: {release.description}")
        return self._finish(release, start=start, timeout=timeout, created=False)

    def _finish(
        self, release: Release, *, start: float, timeout: float, created: bool
    ) -> DeployResult:
        deadline = start + timeout
        release = self.follow(release, start=start, deadline=deadline)
        urls = self._retrying(lambda: self.client.get_app(release.app).urls, deadline=deadline)
        url = urls[0] if urls else None
        if url:
            self.report(url)
        return DeployResult(release=release, url=url, created_app=created)

    def follow(self, release: Release, *, start: float, deadline: float) -> Release:
        """Print each new stage once, until `routed` (success) or `failed` (DeployFailed)."""
        seen: set[str] = set()
        proxy_errors: set[str] = set()
        index = 0
        while True:
            self._show(release, seen, start)
            if release.stage == "routed":
                return release
            if release.status == "active":  # serving; waiting for proxies to route it
                self._show_proxy_errors(proxy_errors)
            if release.status == "failed" or release.stage == "failed":
                self.report(f"{'failed':<11} {self.clock() - start:6.1f}s")
                raise DeployFailed(self._failure(release))
            left = deadline - self.clock()
            if left <= 0:
                hint = f"; proxy errors: {' | '.join(sorted(proxy_errors))}" if proxy_errors else ""
                raise DeployFailed(
                    f"release v{release.version} did not finish in time"
                    f" (last stage: {release.stage}, status: {release.status}){hint}"
                )
            wait = max(1, min(WATCH_WAIT_S, int(left)))
            watch = functools.partial(
                self.client.watch_release, release.app, release.version, index=index, wait_s=wait
            )
            release, new_index = self._retrying(watch, deadline=deadline)
            if new_index <= 0:
                self.sleep(1.0)  # no X-Paas-Index: degrade to slow polling, never spin
            index = max(index, new_index)

    def _retrying(self, call: Callable[[], T], *, deadline: float) -> T:
        """`call()`, retried with back-off while the registry is unreachable (restarting),
        for at most `reconnect_s` and never past `deadline`."""
        delays = retry_delays()
        lost_at: float | None = None
        while True:
            try:
                result = call()
            except (RegistryUnreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status not in RETRY_STATUSES:
                    raise
                now = self.clock()
                if lost_at is None:
                    lost_at = now
                    self.report(
                        f"lost the registry ({exc}); retrying for up to {self.reconnect_s:g}s"
                    )
                if now - lost_at >= self.reconnect_s or now >= deadline:
                    raise RegistryUnreachable(
                        f"{exc}; gave up after {now - lost_at:.0f}s of retrying"
                        " (the release may still finish: see `paas releases`)"
                    ) from exc
                self.sleep(min(next(delays), max(0.0, deadline - now)))
                continue
            if lost_at is not None:
                self.report("the registry answers again")
            return result

    def _show_proxy_errors(self, shown: set[str]) -> None:
        """A proxy that refuses its config keeps a release from `routed`: say which, once."""
        try:
            hosts = self.client.list_hosts()
        except CliError:
            return  # only a diagnostic; the stage watch goes on and reports the outcome
        for host in hosts:
            if host.proxy_error and host.state == "up":
                line = f"{host.name}: {host.proxy_error.strip().splitlines()[-1]}"
                if line not in shown:
                    shown.add(line)
                    self.report(f"waiting for {line}")

    def _show(self, release: Release, seen: set[str], start: float) -> None:
        """Stages are ordered: a later one implies the earlier ones passed between polls."""
        if release.stage not in STAGES:
            return
        for stage in STAGES[: STAGES.index(release.stage) + 1]:
            if stage == "release phase" and "release" not in release.processes:
                continue  # no `release:` line: there is no such stage
            if stage not in seen:
                seen.add(stage)
                self.report(f"{stage:<11} {self.clock() - start:6.1f}s")
            if stage == "release phase":
                self._show_release_output(release, seen)
        waiting = release.stage == "healthy" and release.status == "deploying"
        if waiting and release.min_healthy_s > 0 and "window" not in seen:
            seen.add("window")  # the previous release serves until the new one proved itself
            self.report(
                f"{'':<19} must stay healthy {release.min_healthy_s:g} s before the switch;"
                " the previous release serves meanwhile"
            )

    def _show_release_output(self, release: Release, seen: set[str]) -> None:
        """The release phase's output, once it ran (a failed phase's is in the error)."""
        if release.release_output is None or release.status == "failed" or "output" in seen:
            return
        seen.add("output")
        for line in release.release_output.splitlines():
            self.report(f"  release> {line}")

    @staticmethod
    def _failure(release: Release) -> str:
        reason = release.error or next(
            (i.error for i in release.instances if i.error), "no reason given"
        )
        return f"failed: release v{release.version} of {release.app}: {reason.rstrip()}"
