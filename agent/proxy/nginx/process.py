"""The machine agent's nginx process: validate, start, reload, restart if it died, stop.

nginx runs as a child of the agent in the foreground (`-g 'daemon off;'`), in its own process
group, with every file under state_dir/nginx/ (prefix, config, pid, logs, temp), never
touching /etc/nginx or the system service. When the agent runs as root the workers run as an
unprivileged user; nginx itself chowns its temp folders to that user when it creates them.
Workers that cannot reach the state folder buffer in SHARED_TEMP_ROOT/<id> instead: never in
/tmp or /var/tmp, which systemd may replace (PrivateTmp) while an adopted nginx still runs.
An nginx an earlier agent run left running (same prefix and config) is adopted, not
restarted, so an agent restart (even after SIGKILL) drops no connection.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import logging
import os
import pwd
import shutil
import signal
import stat
import time
from pathlib import Path

from agent import procs
from agent.errors import ProxyError, ReloadFailed, ValidationFailed
from agent.proxy.nginx.view import MAIN_FILE, NginxPaths

log = logging.getLogger(__name__)

VALIDATE_TIMEOUT_S = 10.0
START_TIMEOUT_S = 5.0
RELOAD_TIMEOUT_S = 5.0
# Persistent, outside every agent's state: the machine unit's StateDirectory=paas-nginx.
SHARED_TEMP_ROOT = Path("/var/lib/paas-nginx")


def default_worker_user() -> str | None:
    """www-data (Debian) or nobody when running as root; None (no `user` line) otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("www-data", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return None


class NginxProcess:
    """Owns one nginx master under `prefix` (state_dir/nginx)."""

    def __init__(
        self, prefix: Path, *, binary: str = "nginx", worker_user: str | None = None
    ) -> None:
        self.prefix = prefix
        self.binary = binary
        self.worker_user = worker_user  # the `user` line; None when not running as root
        self._child: procs.Child | procs.Adopted | None = None
        # Set by stop(): a reload still under way in another thread (its nginx exited under
        # it) must not start a new master that outlives the agent's shutdown.
        self._stopped = False
        self._temp_dir: Path | None = None

    @property
    def temp_dir(self) -> Path:
        """Where workers buffer large bodies: under the prefix when the worker user can reach
        it, else SHARED_TEMP_ROOT/<id of the prefix> (the state folder is closed to www-data).
        nginx creates the folders inside 0700 and chowns them to the worker user."""
        if self._temp_dir is None:
            inside = self.prefix / "temp"
            if self.worker_user is None or _reachable_by(self.prefix, self.worker_user):
                self._temp_dir = inside
            else:
                digest = hashlib.sha256(str(self.prefix.resolve()).encode()).hexdigest()[:12]
                self._temp_dir = SHARED_TEMP_ROOT / digest
                log.info(
                    "nginx workers (%s) cannot reach %s; their temp folders go to %s",
                    self.worker_user,
                    inside,
                    self._temp_dir,
                )
        return self._temp_dir

    @property
    def conf_dir(self) -> Path:
        return self.prefix / "conf"

    @property
    def conf(self) -> Path:
        return self.conf_dir / MAIN_FILE

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "nginx.pid"

    def paths(self) -> NginxPaths:
        return NginxPaths(
            pid=str(self.pid_file),
            error_log=str(self.error_log),
            access_log=str(self.prefix / "logs" / "access.log"),
            temp=str(self.temp_dir),
        )

    def prepare(self) -> None:
        """Create the folders; workers must be able to reach the temp folders, and nothing
        else: the master (root) opens the config and the logs, which name every app's requests,
        so apps on the host may not list or read them."""
        for folder in (self.prefix, self.conf_dir, self.prefix / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.prefix, 0o711)
        os.chmod(self.conf_dir, 0o700)
        os.chmod(self.prefix / "logs", 0o700)
        if self.temp_dir.is_relative_to(self.prefix):
            self.temp_dir.mkdir(exist_ok=True)
            os.chmod(self.temp_dir, 0o755)
            return
        _prepare_shared_temp(self.temp_dir, self.worker_user)

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs (started or adopted)."""
        return self._child.pid if self.running and self._child is not None else None

    def adopt(self) -> bool:
        """Take over the nginx master an earlier agent run left running on our config."""
        if self.running:
            return True
        master = self._running_master()
        if master is None:
            return False
        self._child = master
        log.info("adopted the running nginx master %d", master.pid)
        return True

    def _running_master(self) -> procs.Adopted | None:
        """The live nginx master of the pid file, when it runs with our prefix and config."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        master = procs.find(pid)
        if master is None:
            return None
        title = " ".join(master.cmdline())
        if "nginx: master process" not in title or f"-c {self.conf} " not in f"{title} ":
            return None
        return master

    # ---- validate / reload (the ConfigApplier callbacks) --------------------------------

    def validate(self, staged_conf: Path) -> None:
        """`nginx -t` on the staged file; raises ValidationFailed with nginx's message."""
        argv = [
            self.binary,
            "-t",
            "-q",
            "-p",
            f"{self.prefix}/",
            "-c",
            str(staged_conf),
            "-e",
            str(self.error_log),
        ]
        try:
            result = procs.run(argv, timeout_s=VALIDATE_TIMEOUT_S, check=False)
        except procs.ProcessError as exc:
            raise ValidationFailed(f"nginx -t could not run: {exc}") from exc
        if result.returncode != 0:
            raise ValidationFailed(result.output.strip() or f"nginx -t exited {result.returncode}")

    def reload(self) -> None:
        """SIGHUP the running master (it re-reads the live conf), or start it."""
        if self.running and self._child is not None:
            master = self._child.pid
            old = {worker.pid for worker in _workers(master)}
            # To the master only: it re-reads the conf and replaces its workers gracefully.
            if not self._child.signal_leader(signal.SIGHUP):
                raise ReloadFailed(f"nginx exited before reload: {procs.tail(self.error_log)}")
            self._wait_for_new_workers(master, old)
            log.info("nginx reloaded (pid %d)", master)
            return
        try:
            self.start()
        except ProxyError as exc:
            raise ReloadFailed(str(exc)) from exc

    def _wait_for_new_workers(self, master: int, old: set[int]) -> None:
        """Return once new workers run and every old one is shutting down (it has closed its
        listening sockets), so new connections see the new config: only then is it "routed"."""
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                raise ReloadFailed(f"nginx exited during reload: {procs.tail(self.error_log)}")
            workers = _workers(master)
            fresh = [w for w in workers if w.pid not in old]
            lingering = [w for w in workers if w.pid in old and "shutting down" not in w.title]
            if fresh and not lingering:
                return
            time.sleep(0.01)
        raise ReloadFailed(
            f"nginx did not take the new config within {RELOAD_TIMEOUT_S:g}s: "
            + procs.tail(self.error_log, lines=5)
        )

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start nginx on the live conf; waits until it wrote its pid file (it has bound)."""
        if self.running:
            return
        if self._stopped:
            raise ProxyError("nginx was stopped: the agent is shutting down")
        if not self.conf.is_file():
            raise ProxyError(f"nginx has no config at {self.conf} yet")
        self._stop_stale()
        self.prepare()
        argv = [
            self.binary,
            "-p",
            f"{self.prefix}/",
            "-c",
            str(self.conf),
            "-e",
            str(self.error_log),
            "-g",
            "daemon off;",
        ]
        self.pid_file.unlink(missing_ok=True)
        child = procs.spawn(
            argv, env=_minimal_env(), cwd=self.prefix, log_path=self.prefix / "logs" / "nginx.out"
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if child.poll() is not None:
                tail = procs.tail(self.error_log, lines=5) or procs.tail(
                    self.prefix / "logs" / "nginx.out", lines=5
                )
                raise ProxyError(f"nginx exited at start (status {child.poll()}): {tail}")
            if self._pid_written():
                break
            time.sleep(0.02)
        else:
            child.stop(grace_s=2.0)
            raise ProxyError(f"nginx did not come up within {START_TIMEOUT_S:g}s")
        self._child = child
        log.info("nginx started (pid %d) on %s", child.pid, self.conf)

    def _pid_written(self) -> bool:
        """nginx creates its pid file once its sockets are bound, then writes the pid: only a
        file with the pid in it means started (an empty one was seen in between)."""
        try:
            return bool(self.pid_file.read_text().strip())
        except OSError:
            return False

    def ensure_running(self) -> bool:
        """Restart nginx if it died while we had a live config; True if it is running."""
        if self.running:
            return True
        if self._child is not None:
            log.error(
                "nginx (pid %d) died with status %s; restarting it",
                self._child.pid,
                self._child.poll(),
            )
            # Its workers may outlive it and still hold the port: end the whole group.
            procs.kill_group(self._child.pid)
            self._child = None
        if not self.conf.is_file():
            return False
        try:
            self.start()
        except ProxyError as exc:
            log.error("nginx could not be restarted: %s", exc)
            return False
        return True

    def stop(self, *, grace_s: float = 10.0) -> None:
        """Graceful stop (SIGQUIT: finish in-flight requests), SIGKILL after `grace_s`; for
        good: nothing starts this nginx again."""
        self._stopped = True
        child, self._child = self._child, None
        if child is None or child.poll() is not None:
            return
        child.signal_leader(signal.SIGQUIT)
        if child.wait(grace_s) is None:
            log.info("nginx did not quit within %.1fs, killing it", grace_s)
        child.stop(grace_s=1.0)
        if not self.temp_dir.is_relative_to(self.prefix):
            shutil.rmtree(self.temp_dir, ignore_errors=True)  # only buffers of this nginx
        log.info("nginx stopped")

    def _stop_stale(self) -> None:
        """An nginx left over from an earlier agent run holds our port: stop it first."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        stale = procs.find(pid, leader=False)
        if stale is None or not any("nginx" in arg for arg in stale.cmdline()):
            return
        log.info("stopping nginx pid %d left over from an earlier run", pid)
        stale.signal_leader(signal.SIGQUIT)
        if stale.wait(5.0) is None:
            stale.signal_leader(signal.SIGKILL)


def _prepare_shared_temp(folder: Path, user: str | None) -> None:
    """SHARED_TEMP_ROOT (root, 0711: enter, never list) / <id> (the worker user's, 0700).
    Refuses a symlink or a folder of another user: the path must not lead elsewhere."""
    folder.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(folder.parent, 0o711)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    entry = pwd.getpwnam(user) if user is not None else None
    owners = {0} if entry is None else {0, entry.pw_uid}
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners:
        raise ProxyError(f"{folder} is not a folder of root or {user}; remove it")
    if entry is not None:
        os.chown(folder, entry.pw_uid, entry.pw_gid)  # a root-only parent: no one swaps it
    os.chmod(folder, 0o700)


def _reachable_by(folder: Path, user: str) -> bool:
    """Can `user` traverse every folder from / down to `folder` (search permission)?"""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False
    groups = {entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    current = folder.resolve()
    for part in [current, *current.parents]:
        try:
            info = part.stat()
        except OSError:
            return False
        if info.st_uid == entry.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def _workers(master: int) -> list[procs.ChildProcess]:
    """The master's worker processes (nginx titles them "nginx: worker process")."""
    return [child for child in procs.children(master) if "worker process" in child.title]


def _minimal_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
