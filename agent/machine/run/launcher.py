"""How an app instance's process is started: argv, environment, cwd and log file.

The Procfile command is run as `["/bin/sh", "-c", command]`; nothing is formatted into it.
Every value (port, config vars, venv) reaches the process only through its environment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from agent import procs
from agent.machine.build.installer import InstalledRelease
from agent.machine.run.cgroups import LeafCgroup

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def instance_env(
    config: Mapping[str, str],
    *,
    port: int | None,
    venv: Path,
    home: Path,
    system_path: str | None = None,
    tmp: Path | None = None,
    user: str | None = None,
    data: Path | None = None,
) -> dict[str, str]:
    """The config vars, then ours on top (an app cannot override PORT, the venv, HOME, its
    temp folder or who it is).

    `port` None: a worker, which gets no PORT (a config var named PORT is dropped too, so a
    worker never believes it should listen). `tmp`: the app's own temp folder (TMPDIR, TMP,
    TEMP), which outlives an agent restart, unlike a PrivateTmp. `user`: USER/LOGNAME, as an
    app uid has no passwd entry (getpass.getuser() reads them). `data`: PAAS_DATA_DIR, the
    app's data folder on this host, kept across releases (agent/machine/storage/datadir.py)."""
    env = dict(config)
    env.pop("PORT", None)
    if port is not None:
        env["PORT"] = str(int(port))
    env.update(
        {
            "PATH": f"{venv / 'bin'}:{system_path or DEFAULT_PATH}",
            "VIRTUAL_ENV": str(venv),
            "HOME": str(home),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if tmp is not None:
        env.update(TMPDIR=str(tmp), TMP=str(tmp), TEMP=str(tmp))
    if user is not None:
        env.update(USER=user, LOGNAME=user)
    if data is not None:
        env["PAAS_DATA_DIR"] = str(data)
    else:
        env.pop("PAAS_DATA_DIR", None)
    env.pop("PYTHONHOME", None)
    return env


class AppLauncher:
    """Implements supervisor.Launcher for one instance: same argv/env/port on every restart.

    `on_spawn` learns every new child (the machine agent writes its run record there, so a
    restarted agent can adopt it)."""

    def __init__(
        self,
        command: str,
        release: InstalledRelease,
        *,
        env: Mapping[str, str],
        log_path: Path,
        on_spawn: Callable[[procs.Child], None] | None = None,
        user: procs.AppUser | None = None,
        cgroup: LeafCgroup | None = None,
    ) -> None:
        self.argv = ["/bin/sh", "-c", command]
        self.release = release
        self.env = dict(env)
        self.log_path = log_path
        self._on_spawn = on_spawn
        self.user = user  # the app's uid (the agent is root), else as the agent
        self.cgroup = cgroup  # the instance's cgroup (limits), None when there are none

    def spawn(self) -> procs.Child:
        user = self.user
        if user is not None and self.cgroup is not None:
            user = user.in_cgroups(self.cgroup.prepare())
        child = procs.spawn(
            self.argv, env=self.env, cwd=self.release.path, log_path=self.log_path, user=user
        )
        if self._on_spawn is not None:
            try:
                self._on_spawn(child)
            except OSError as exc:
                child.stop(grace_s=2.0)
                raise procs.ProcessError(f"could not record the started process: {exc}") from exc
        return child

    def log_tail(self) -> str:
        return procs.tail(self.log_path, lines=20)

    def exit_note(self) -> str | None:
        """Why the process died when the status alone does not say (its memory limit)."""
        return self.cgroup.exit_note() if self.cgroup is not None else None


def system_path() -> str:
    return os.environ.get("PATH") or DEFAULT_PATH
