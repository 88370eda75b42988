"""Removes what no kept release of this host needs: old releases, unused venvs, cached
artifacts, and the folders of apps that left this host.

Kept, per app: the `keep_releases` newest release folders plus every release an instance
here uses (active, deploying, a running rollback target); the venvs those releases use
(by the spec the agent saved for each, never by anything the app wrote), and any venv
younger than `venv_min_age_s` (one may be being built); the cached artifacts of the kept
releases. An app with no instance here for `gone_app_s` loses everything but its data
folder (and its uid's stray processes are killed): the data of a deleted app goes only
with `paas apps:delete --delete-data`. Apps with an install under way are skipped.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent import procs
from agent.link import statefile
from agent.machine.build.envspec import SavedSpec
from agent.machine.build.installer import Installer
from agent.machine.run.uids import APP_SUBFOLDERS
from agent.machine.storage import disk

log = logging.getLogger(__name__)

GONE_SUBFOLDERS = APP_SUBFOLDERS  # everything but data/


@dataclass
class Swept:
    releases: int = 0
    venvs: int = 0
    artifacts: int = 0
    apps: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.releases or self.venvs or self.artifacts or self.apps)


class Janitor:
    def __init__(
        self,
        installer: Installer,
        *,
        keep_releases: int,
        venv_min_age_s: float,
        gone_app_s: float,
    ) -> None:
        self.installer = installer
        self.keep_releases = keep_releases
        self.venv_min_age_s = venv_min_age_s
        self.gone_app_s = gone_app_s
        self._last_seen: dict[str, float] = {}

    @property
    def apps_dir(self) -> Path:
        return self.installer.users.apps_dir

    def touch(self, app: str, now: float) -> None:
        """`app` did something here without an instance (a release phase, a run)."""
        self._last_seen[app] = now

    def sweep(self, in_use: Mapping[str, set[tuple[int, str]]], *, now: float) -> Swept:
        """One pass. `in_use`: app -> {(version, artifact sha256)} of every instance here.
        Blocking (run it in a thread); each step is idempotent. Installs wait for a pass to
        end (`sweep_lock`), and a pass skips the apps being installed."""
        with self.installer.sweep_lock:
            return self._sweep(in_use, now=now)

    def _sweep(self, in_use: Mapping[str, set[tuple[int, str]]], *, now: float) -> Swept:
        swept = Swept()
        kept_shas: set[str] = {sha for uses in in_use.values() for _, sha in uses}
        apps = sorted(p.name for p in self.apps_dir.iterdir()) if self.apps_dir.is_dir() else []
        for app in apps:
            if app in self.installer.busy:
                self._last_seen[app] = now
                continue
            if app in in_use:
                self._last_seen[app] = now
            elif now - self._last_seen.setdefault(app, now) >= self.gone_app_s:
                if self._remove_app(app):
                    swept.apps.append(app)
                continue
            versions = {v for v, _ in in_use.get(app, set())}
            kept_shas |= self._prune_app(app, versions, swept, now=now)
        swept.artifacts = self._prune_artifacts(kept_shas)
        if swept:
            log.info(
                "disk hygiene: removed %d release(s), %d venv(s), %d artifact(s)%s",
                swept.releases,
                swept.venvs,
                swept.artifacts,
                f", folders of {', '.join(swept.apps)}" if swept.apps else "",
            )
        return swept

    def _spec(self, app: str, version: int) -> SavedSpec | None:
        path = self.installer.state_dir / "specs" / app / f"{version}.json"
        return statefile.load(path, SavedSpec)

    def _prune_app(self, app: str, in_use: set[int], swept: Swept, *, now: float) -> set[str]:
        """Remove old releases and unused venvs of one app; the artifacts kept ones use."""
        folders = self.installer.users.folders(app)
        versions = disk.release_versions(folders.releases)
        keep = disk.releases_to_keep(versions, in_use=in_use, keep=self.keep_releases)
        for version in sorted(set(versions) - keep):
            if disk.remove_tree(folders.releases / str(version), staging=folders.staging):
                swept.releases += 1
            (self.installer.state_dir / "specs" / app / f"{version}.json").unlink(missing_ok=True)
        venvs: set[str] = set()
        shas: set[str] = set()
        for version in keep:
            spec = self._spec(app, version)
            if spec is not None:
                venvs.add(spec.key)
                shas.add(spec.sha256)
        try:
            names = os.listdir(folders.venvs)
        except OSError:
            names = []
        for name in names:
            path = folders.venvs / name
            if name in venvs or not disk.older_than(path, self.venv_min_age_s, now=time.time()):
                continue
            if disk.remove_tree(path, staging=folders.staging):
                swept.venvs += 1
        return shas

    def _prune_artifacts(self, kept: set[str]) -> int:
        """Cached artifacts no kept release uses; none while any install is under way (its
        artifact is downloaded before its release exists)."""
        if self.installer.busy:
            return 0
        root = self.installer.artifacts_dir
        removed = 0
        try:
            entries = list(root.iterdir())
        except OSError:
            return 0
        for path in entries:
            sha = path.name.removesuffix(".tar.gz")
            if sha in kept or not path.name.endswith(".tar.gz"):
                continue
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def _remove_app(self, app: str) -> bool:
        """An app gone from this host: kill its uid's processes, remove all but its data."""
        folders = self.installer.users.folders(app)
        uid = self.installer.users.uid_of(app) if self.installer.users.isolated else None
        if uid is not None:
            _kill_uid(uid)
        removed = False
        for name in GONE_SUBFOLDERS:
            removed |= disk.remove_tree(folders.root / name, staging=folders.staging)
        specs = self.installer.state_dir / "specs" / app
        if specs.is_dir():
            disk.remove_tree(specs, staging=folders.staging)
        if removed:
            log.info("app %s has had no instance here for a while: removed its folders", app)
        self._last_seen.pop(app, None)
        return removed


def _kill_uid(uid: int) -> None:
    for pid in procs.pids_of_uid(uid):
        log.warning("killing process %d of a departed app (uid %d)", pid, uid)
        procs.signal_pid(pid, signal.SIGKILL)
