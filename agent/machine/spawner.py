"""How this host runs an app's code: as the app's own uid, in its cgroups with its limits,
with the environment built from its config vars, under a supervisor with its check policy.

Instances, replacements, adopted processes, one-off runs and release-phase commands all get
these from here, so no path runs app code with another user, limit or environment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from agent import procs
from agent.machine.build.installer import InstalledRelease, Installer, find_uv
from agent.machine.run.cgroups import Cgroups, LeafCgroup, Limits
from agent.machine.run.launcher import AppLauncher, instance_env, system_path
from agent.machine.run.runrecords import recorder
from agent.machine.run.supervisor import Policy, Supervisor
from agent.machine.run.uids import AppUsers, let_apps_pass, secure_state_dir
from agent.machine.storage import datadir
from agent.settings import AgentSettings
from common.wire import DesiredInstance

log = logging.getLogger(__name__)


def isolate_apps(settings: AgentSettings) -> tuple[AppUsers, Cgroups | None]:
    """Make the state folder safe to share with app uids; the app users and, as root, the
    cgroups. Without root, apps run as the agent's own user and without limits (said once)."""
    state_dir = settings.state_dir
    isolated = os.geteuid() == 0
    if not isolated:
        log.warning(
            "the agent does not run as root: apps run as its own user (uid %d), not each"
            " as its own uid, and without cgroup limits",
            os.geteuid(),
        )
    if settings.run_as_user is not None:
        log.warning(
            "run_as_user is deprecated and ignored: each app runs as its own uid from"
            " app_uids (%s)",
            settings.app_uids,
        )
    secure_state_dir(state_dir, isolated=isolated)
    if isolated:
        # Builds run as the app's uid: it must reach the installer and the interpreter.
        for tool in (find_uv(), sys.executable):
            if tool:
                let_apps_pass(Path(tool), what="the build tools")
    users = AppUsers(state_dir, uid_range=settings.app_uid_bounds, isolated=isolated)
    cgroups = (
        Cgroups.detect("paas-" + hashlib.sha256(str(state_dir).encode()).hexdigest()[:10])
        if isolated
        else None
    )
    return users, cgroups


class AppLimits:
    """The cgroup limits of each app's builds, runs and instances (none when not root)."""

    def __init__(self, settings: AgentSettings, cgroups: Cgroups | None) -> None:
        self.settings = settings
        self.cgroups = cgroups

    def limits(self, memory_mb: int | None) -> Limits:
        return Limits(
            memory_mb=memory_mb,
            pids_max=self.settings.app_pids_max,
            cpu_weight=self.settings.app_cpu_weight,
        )

    def build_cgroup(self, app: str) -> tuple[Path, ...]:
        if self.cgroups is None:
            return ()
        return self.cgroups.prepare(app, "build", self.limits(self.settings.build_memory_mb))

    def run_cgroup(self, app: str, memory_mb: int | None) -> tuple[Path, ...] | None:
        """The `run` cgroup of `app` (the app's pids limit, an instance's memory limit)."""
        if self.cgroups is None:
            return None
        return self.cgroups.prepare(app, "run", self.limits(memory_mb))

    def instance_cgroup(self, d: DesiredInstance) -> LeafCgroup | None:
        if self.cgroups is None:
            return None
        return LeafCgroup(self.cgroups, d.app, f"i{d.id}", self.limits(d.memory_mb))


class Spawner:
    """Builds what runs an app's code here; starts nothing itself."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        users: AppUsers,
        limits: AppLimits,
        installer: Installer,
        policy: Policy,
        run_dir: Path,
    ) -> None:
        self.settings = settings
        self.users = users
        self.limits = limits
        self.installer = installer
        self.base_policy = policy  # start_timeout_s comes from each desired instance
        self.run_dir = run_dir

    async def install(self, d: DesiredInstance) -> InstalledRelease:
        """The instance's release, installed here (cached: a second call costs nothing)."""
        return await self.installer.install(
            app=d.app, version=d.release, sha256=d.artifact_sha256, app_id=app_id_of(d.env)
        )

    def supervisor(
        self, d: DesiredInstance, release: InstalledRelease, port: int | None
    ) -> Supervisor:
        env = self.app_env(d.app, d.env, port=port, venv=release.venv)
        launcher = AppLauncher(
            d.command,
            release,
            env=env,
            log_path=self.settings.state_dir / "logs" / d.app / f"{d.id}.log",
            on_spawn=recorder(self.run_dir, d, release, port),
            user=self.installer.app_user(d.app),
            cgroup=self.limits.instance_cgroup(d),
        )
        return Supervisor(f"{d.app}#{d.id}", launcher, policy=self.policy(d))

    def policy(self, d: DesiredInstance) -> Policy:
        return replace(
            self.base_policy,
            start_timeout_s=d.health_timeout_s,
            unhealthy_after=d.health_threshold,
        )

    def app_env(
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

    def run_user(self, app: str, memory_mb: int | None) -> procs.AppUser | None:
        """Who one-off and release-phase commands of `app` run as: its uid, in its `run`
        cgroup (the app's pids limit, an instance's memory limit)."""
        user = self.installer.app_user(app)
        if user is None:
            return user
        cgroup = self.limits.run_cgroup(app, memory_mb)
        return user if cgroup is None else user.in_cgroups(cgroup)


def app_id_of(env: dict[str, str]) -> str | None:
    """The app's registry id (the registry sends it as PAAS_APP_ID): data is keyed by it."""
    value = env.get("PAAS_APP_ID")
    return value if value is not None and datadir.valid_app_id(value) else None
