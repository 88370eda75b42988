"""How an app instance's process is started: argv, environment, cwd and log file.

The Procfile command is run as `["/bin/sh", "-c", command]`; nothing is formatted into it.
Every value (port, config vars, venv) reaches the process only through its environment.
"""

from __future__ import annotations

import logging
import os
import pwd
from collections.abc import Callable, Mapping
from pathlib import Path

from agent import procs
from agent.installer import InstalledRelease

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def instance_env(
    config: Mapping[str, str],
    *,
    port: int | None,
    venv: Path,
    home: Path,
    system_path: str | None = None,
) -> dict[str, str]:
    """The config vars, then ours on top (an app cannot override PORT or the venv).

    `port` None: a worker, which gets no PORT (a config var named PORT is dropped too, so a
    worker never believes it should listen)."""
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
        user: str | None = None,
    ) -> None:
        self.argv = ["/bin/sh", "-c", command]
        self.release = release
        self.env = dict(env)
        self.log_path = log_path
        self._on_spawn = on_spawn
        self.user = user  # run as this unprivileged user (the agent is root), else as the agent

    def spawn(self) -> procs.Child:
        home = Path(self.env["HOME"])
        home.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            _give_to(home, self.user)
        child = procs.spawn(
            self.argv, env=self.env, cwd=self.release.path, log_path=self.log_path, user=self.user
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


def _give_to(folder: Path, user: str) -> None:
    """The app's HOME belongs to the user it runs as (it may write caches there)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise procs.ProcessError(f"user {user!r} does not exist") from exc
    os.chown(folder, entry.pw_uid, entry.pw_gid)


def system_path() -> str:
    return os.environ.get("PATH") or DEFAULT_PATH
