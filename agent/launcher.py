"""How an app instance's process is started: argv, environment, cwd and log file.

The Procfile command is run as `["/bin/sh", "-c", command]`; nothing is formatted into it.
Every value (port, config vars, venv) reaches the process only through its environment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from agent import procs
from agent.installer import InstalledRelease

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def instance_env(
    config: Mapping[str, str],
    *,
    port: int,
    venv: Path,
    home: Path,
    system_path: str | None = None,
) -> dict[str, str]:
    """The config vars, then ours on top (an app cannot override PORT or the venv)."""
    env = dict(config)
    env.update(
        {
            "PORT": str(int(port)),
            "PATH": f"{venv / 'bin'}:{system_path or DEFAULT_PATH}",
            "VIRTUAL_ENV": str(venv),
            "HOME": str(home),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("PYTHONHOME", None)
    return env


class AppLauncher:
    """Implements supervisor.Launcher for one instance: same argv/env/port on every restart."""

    def __init__(
        self,
        command: str,
        release: InstalledRelease,
        *,
        env: Mapping[str, str],
        log_path: Path,
        pid_file: Path | None = None,
    ) -> None:
        self.argv = ["/bin/sh", "-c", command]
        self.release = release
        self.env = dict(env)
        self.log_path = log_path
        self.pid_file = pid_file

    def spawn(self) -> procs.Child:
        home = Path(self.env["HOME"])
        home.mkdir(parents=True, exist_ok=True)
        child = procs.spawn(self.argv, env=self.env, cwd=self.release.path, log_path=self.log_path)
        if self.pid_file is not None:
            # So a restarted agent can end what an earlier (killed) run left behind.
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(f"{child.pid}\n")
        return child

    def log_tail(self) -> str:
        return procs.tail(self.log_path, lines=20)


def stop_leftovers(pid_dir: Path, apps_dir: Path, *, grace_s: float = 5.0) -> int:
    """Stop instance process groups an earlier agent run left running; returns how many.

    A pid counts only if it still leads its own process group and runs from under `apps_dir`,
    so a recycled pid of an unrelated process is never signalled.
    """
    stopped = 0
    for pid_file in sorted(pid_dir.glob("*.pid")) if pid_dir.is_dir() else []:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and _is_our_instance(pid, apps_dir):
            log.info("stopping instance pid %d left over from an earlier run", pid)
            procs.stop_group(pid, grace_s=grace_s)
            stopped += 1
        pid_file.unlink(missing_ok=True)
    return stopped


def _is_our_instance(pid: int, apps_dir: Path) -> bool:
    try:
        if os.getpgid(pid) != pid:
            return False
        cwd = Path(f"/proc/{pid}/cwd").resolve()
    except (OSError, ProcessLookupError):
        return False
    return cwd.is_relative_to(apps_dir.resolve())


def system_path() -> str:
    return os.environ.get("PATH") or DEFAULT_PATH
