"""Where an app's one-off commands (`paas run`), release-phase commands and data transfers run
on this host: its installed release, its environment, its uid and cgroup (spawner.py).

The agent API (agent/machine/api/) asks these; they start nothing themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from agent.errors import AgentError
from agent.machine.api.server import DataAccess, ReleasePhaseRequest, RunTarget, UnknownApp
from agent.machine.instances import Instance
from agent.machine.spawner import Spawner, app_id_of
from agent.machine.storage.janitor import Janitor


class AppRunTargets:
    def __init__(
        self,
        spawner: Spawner,
        *,
        host: str,
        instances: Mapping[int, Instance],
        gone_for_good: Callable[[int], bool],
        janitor: Janitor,
    ) -> None:
        self.spawner = spawner
        self.host = host
        self.instances = instances  # the agent's own table, read live
        self._gone_for_good = gone_for_good
        self.janitor = janitor

    async def run_target(self, app: str) -> RunTarget:
        """The environment of `app`'s current release here: the serving instances' release
        if any, else the newest placed one (its artifact, venv and config vars)."""
        candidates = [i.desired for i in self.instances.values() if i.desired.app == app]
        candidates = [d for d in candidates if not self._gone_for_good(d.id)] or candidates
        if not candidates:
            raise UnknownApp(f"app {app} has no instance on host {self.host}")
        d = max(candidates, key=lambda c: (c.serve, c.release))
        try:
            release = await self.spawner.install(d)
        except AgentError as exc:
            raise UnknownApp(f"release {d.release} of {app} is not installed here: {exc}") from exc
        env = self.spawner.app_env(d.app, d.env, port=None, venv=release.venv)
        user = await asyncio.to_thread(self.spawner.run_user, d.app, d.memory_mb)
        return RunTarget(cwd=release.path, env=env, user=user)

    async def release_target(self, app: str, spec: ReleasePhaseRequest) -> RunTarget:
        """Where a release's `release:` command runs: the new release, installed here (the
        instances placed here later reuse it), with the environment the registry sent."""
        try:
            release = await self.spawner.installer.install(
                app=app,
                version=spec.version,
                sha256=spec.artifact_sha256,
                app_id=app_id_of(spec.env),
            )
        except AgentError as exc:
            raise UnknownApp(
                f"release {spec.version} of {app} could not be installed: {exc}"
            ) from exc
        self.janitor.touch(app, time.monotonic())  # no instance here yet: not gone
        env = self.spawner.app_env(app, spec.env, port=None, venv=release.venv)  # not routed
        user = await asyncio.to_thread(self.spawner.run_user, app, self._app_memory(app))
        return RunTarget(cwd=release.path, env=env, user=user)

    def data_access(self, app: str) -> DataAccess:
        """What the agent API needs to export, import or delete `app`'s data here."""
        return DataAccess(
            folders=self.spawner.users.folders(app),
            user=self.spawner.installer.app_user(app),
            state_dir=self.spawner.settings.state_dir,
        )

    def _app_memory(self, app: str) -> int | None:
        return next(
            (i.desired.memory_mb for i in self.instances.values() if i.desired.app == app), None
        )
