"""One unprivileged uid per app on this host, and the app's own folders, owned by it.

Like systemd's DynamicUser: uids come from a range (`app_uids = "70000-79999"`, gid = uid),
need no passwd entry, and are handed out per app name and kept in state_dir/uids.json
(atomic, 0600), so an app keeps its uid across agent restarts and its files stay its own.
A uid is never given to another app: a deleted app's uid stays reserved (with its files),
and a uid is only taken when no process runs as it and no passwd entry names it.

Each app gets state_dir/apps/<app>/ with releases/, venvs/, home/, tmp/ and cache/ inside,
each owned by its uid and 0700. The app's folder itself stays the agent's (0711: its app
passes through, lists nothing), so the agent's `.staging/` beside them (0700, where
releases are unpacked on the same filesystem, which may be the app's own mount) cannot be
renamed or swapped for a link by the app. The agent's own state around it is 0711 or 0700.
When the agent is not root there is no uid to switch to: apps run as the agent's user, as
before, and `isolated` is False.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil
from pydantic import BaseModel, ConfigDict

from agent.errors import AgentError
from agent.link import statefile
from common.names import check_app_name

log = logging.getLogger(__name__)

APP_SUBFOLDERS = ("releases", "venvs", "home", "tmp", "cache")


class UidError(AgentError):
    """No uid could be given to an app, or its folders could not be made safe."""


class _Saved(BaseModel):
    model_config = ConfigDict(extra="forbid")

    apps: dict[str, int] = {}


@dataclass(frozen=True)
class AppFolders:
    root: Path

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def venvs(self) -> Path:
        return self.root / "venvs"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def staging(self) -> Path:
        """The agent's, not the app's: releases are unpacked and checked here."""
        return self.root / ".staging"


def parse_uid_range(text: str) -> tuple[int, int]:
    """'70000-79999' -> (70000, 79999); refuses root, system uids and reversed bounds."""
    try:
        low_text, high_text = text.split("-", 1)
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise ValueError(f"app_uids {text!r} must look like 70000-79999") from None
    if not 1000 <= low <= high < 2**31 - 1:
        raise ValueError(f"app_uids {text!r} must be two uids, low first, within 1000-2147483646")
    return low, high


class AppUsers:
    """Allocates app uids and prepares app folders. Thread-safe (installs run in threads)."""

    def __init__(self, state_dir: Path, *, uid_range: tuple[int, int], isolated: bool) -> None:
        self.state_dir = state_dir
        self.low, self.high = uid_range
        self.isolated = isolated
        self._lock = threading.Lock()
        self._path = state_dir / "uids.json"
        saved = statefile.load(self._path, _Saved)
        self._uids: dict[str, int] = dict(saved.apps) if saved is not None else {}

    @property
    def apps_dir(self) -> Path:
        return self.state_dir / "apps"

    def folders(self, app: str) -> AppFolders:
        return AppFolders(self.apps_dir / check_app_name(app))

    def allocated_uids(self) -> set[int] | None:
        """The uids this agent gave to apps (None when it does not isolate apps)."""
        if not self.isolated:
            return None
        with self._lock:
            return set(self._uids.values())

    def uid_of(self, app: str) -> int | None:
        """The app's uid (None when the agent does not isolate apps)."""
        if not self.isolated:
            return None
        with self._lock:
            return self._allocate(check_app_name(app))

    def prepare(self, app: str) -> AppFolders:
        """The app's folders, created and owned by its uid (0700) in a folder of the agent's
        (0711), and the agent's staging folder (0700). Idempotent."""
        folders = self.folders(app)
        uid = self.uid_of(app)
        self.apps_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        ours = os.geteuid()
        _own_dir(folders.root, ours, mode=0o711 if uid is not None else 0o700)
        _own_dir(folders.staging, ours)
        for name in APP_SUBFOLDERS:
            _own_dir(folders.root / name, uid)
        return folders

    # ---- allocation -----------------------------------------------------------------------

    def _allocate(self, app: str) -> int:
        uid = self._uids.get(app)
        if uid is not None:
            return uid
        taken = set(self._uids.values())
        busy = _uids_with_processes()
        for candidate in range(self.low, self.high + 1):
            if candidate in taken or candidate in busy or _has_passwd_entry(candidate):
                continue
            self._uids[app] = candidate
            statefile.save(self._path, _Saved(apps=self._uids))
            log.info("app %s runs as uid %d on this host", app, candidate)
            return candidate
        raise UidError(f"no free uid left in {self.low}-{self.high} for app {app}; widen app_uids")


def _uids_with_processes() -> set[int]:
    uids: set[int] = set()
    for proc in psutil.process_iter():
        try:
            uids.update(proc.uids())
        except psutil.Error:
            continue
    return uids


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _own_dir(path: Path, uid: int | None, *, mode: int = 0o700) -> None:
    """mkdir + chown + chmod without following a symlink someone put there."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise UidError(f"could not prepare {path}: {exc}") from exc
    try:
        if uid is not None:
            os.fchown(fd, uid, uid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def secure_state_dir(state_dir: Path, *, isolated: bool) -> None:
    """The agent's own state: 0711 where apps pass through (state_dir, apps/), 0700 for the
    rest of what we create. With isolated apps, every parent of state_dir must let others
    pass (o+x), or no app reaches its folder: parents we own get o+x (only search, no
    listing), others stop the agent with a clear error."""
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o711 if isolated else 0o700)
    for sub, mode in (("apps", 0o711), ("artifacts", 0o700), ("logs", 0o700), ("run", 0o700)):
        (state_dir / sub).mkdir(exist_ok=True)
        os.chmod(state_dir / sub, mode)
    if isolated:
        let_apps_pass(state_dir, what="their folders")


def let_apps_pass(path: Path, *, what: str) -> None:
    """Every folder above `path` must let other users pass (o+x), or app uids cannot reach
    it: folders we own get o+x (search only, no listing), others stop the agent with a
    clear error. Used for the state folder and for the build tools (uv, the venv's python),
    which may live in a checkout under a 0700 folder (a `mktemp -d` clone)."""
    for parent in path.parents:
        info = parent.stat()
        if info.st_mode & stat.S_IXOTH:
            continue
        if info.st_uid != os.geteuid():
            raise UidError(
                f"{parent} does not let other users pass (mode {stat.S_IMODE(info.st_mode):o});"
                f" app users cannot reach {what} under it: chmod o+x {parent}"
            )
        os.chmod(parent, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
        log.warning("%s: added o+x so app users reach %s under it", parent, what)
