"""An app's data folder on this host: PAAS_DATA_DIR, kept across releases and config changes.

state_dir/apps/<app>/data/ is owned by the app's uid (0700) and made before anything of a
release runs (the release phase included). It belongs to one app *id* of the registry, not
to a name: the agent keeps the id in state_dir/apps/<app>/.data-owner (its own file), and
when an app of the same name with another id arrives (the old one was deleted), the old
data is moved aside into state_dir/retired-data/ (root 0700, no app reaches it) and the new
app starts with an empty folder. Retired data is removed only when asked
(`paas apps:delete --delete-data`), or by an operator.

Export and import run `tar` as the app's uid, so an archive can only create what the app
itself could, and a link in the data folder leads nowhere the app could not already go.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from agent import procs
from agent.errors import AgentError
from agent.machine.run.uids import AppFolders, _own_dir
from agent.machine.storage.disk import remove_tree
from common.fsutil import atomic_write

log = logging.getLogger(__name__)

APP_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")
TAR_TIMEOUT_S = 3600.0
MAX_IMPORT_BYTES = 4 << 30


class DataError(AgentError):
    """Export or import of an app's data failed."""


def valid_app_id(value: str) -> bool:
    """'<row id>-<created, microseconds>' as the registry sends it in PAAS_APP_ID."""
    return APP_ID.fullmatch(value) is not None


def data_dir(folders: AppFolders) -> Path:
    return folders.root / "data"


def _owner_file(folders: AppFolders) -> Path:
    return folders.root / ".data-owner"


def retired_dir(state_dir: Path) -> Path:
    return state_dir / "retired-data"


_PREPARING = threading.Lock()


def owner(folders: AppFolders) -> str | None:
    try:
        return _owner_file(folders).read_text().strip() or None
    except OSError:
        return None


def prepare_data(
    folders: AppFolders, *, uid: int | None, app_id: str | None, state_dir: Path
) -> Path:
    """The app's data folder, created (uid-owned, 0700) and claimed for `app_id`; data of
    another app id under the same name is moved aside first. Idempotent."""
    if app_id is not None and not valid_app_id(app_id):
        raise DataError(f"bad app id {app_id!r}")
    # The web and worker installs of one app prepare it at the same time, in threads.
    with _PREPARING:
        return _prepare_data(folders, uid=uid, app_id=app_id, state_dir=state_dir)


def _prepare_data(
    folders: AppFolders, *, uid: int | None, app_id: str | None, state_dir: Path
) -> Path:
    data = data_dir(folders)
    held = owner(folders)
    if app_id is not None and held != app_id:
        if held is not None and (data.exists() or data.is_symlink()):
            retire(folders, held, state_dir=state_dir)
        elif held is None and (data.exists() or data.is_symlink()):
            # Made before ids were kept: it is this app's (nothing else could have made it).
            pass
        _write_owner(folders, app_id)
    _own_dir(data, uid)
    return data


def _write_owner(folders: AppFolders, app_id: str) -> None:
    atomic_write(_owner_file(folders), app_id + "\n", mode=0o600)


def retire(folders: AppFolders, app_id: str, *, state_dir: Path) -> Path | None:
    """Move the data of app id `app_id` out of the app's reach (kept, not deleted)."""
    data = data_dir(folders)
    target_root = retired_dir(state_dir)
    target_root.mkdir(mode=0o700, exist_ok=True)
    os.chmod(target_root, 0o700)
    target = target_root / f"{folders.root.name}.{app_id}.{int(time.time())}"
    try:
        os.rename(data, target)
    except FileNotFoundError:
        return None
    _owner_file(folders).unlink(missing_ok=True)
    log.warning(
        "data of %s (app id %s) belongs to a deleted app: moved aside to %s",
        folders.root.name,
        app_id,
        target,
    )
    return target


def delete_data(folders: AppFolders, app_id: str, *, state_dir: Path) -> int:
    """Remove the data of app id `app_id`: its live folder (if it still holds it) and
    anything retired for it. Returns how many folders went."""
    removed = 0
    if owner(folders) == app_id and remove_tree(data_dir(folders), staging=folders.staging):
        _owner_file(folders).unlink(missing_ok=True)
        removed += 1
    root = retired_dir(state_dir)
    prefix = f"{folders.root.name}.{app_id}."
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(prefix):
                remove_tree(entry, staging=root)
                removed += 1
    return removed


# ---- export / import (as the app's uid) -----------------------------------------------------


def _tar(argv: list[str], user: procs.AppUser | None, **streams: Any) -> None:
    prepared = procs.prepare(argv, {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, user)
    try:
        done = subprocess.run(
            prepared.argv,
            env=prepared.env,
            pass_fds=prepared.pass_fds,
            stderr=subprocess.PIPE,
            timeout=TAR_TIMEOUT_S,
            check=False,
            **streams,
        )
    finally:
        prepared.close()
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise DataError("tar failed: " + " / ".join(tail))


def export_to(folders: AppFolders, user: procs.AppUser | None, out: Path) -> None:
    """Pack the data folder (tar.gz) into `out`, an agent-owned file the app cannot reach."""
    data = data_dir(folders)
    if not data.is_dir() or data.is_symlink():
        raise DataError(f"app {folders.root.name} has no data folder on this host")
    with out.open("wb") as sink:
        _tar(["tar", "-C", str(data), "-czf", "-", "."], user, stdout=sink)


def import_from(folders: AppFolders, user: procs.AppUser | None, archive: Path) -> None:
    """Replace the data folder's contents with the archive's: unpacked as the app's uid into
    a fresh folder, swapped in only once tar succeeded (a bad archive changes nothing)."""
    uid = user.uid if user is not None else None
    fresh = folders.root / ".data-import"
    remove_tree(fresh, staging=folders.staging)
    _own_dir(fresh, uid)
    try:
        with archive.open("rb") as source:
            _tar(
                ["tar", "-C", str(fresh), "-xzf", "-", "--no-same-owner", "--no-overwrite-dir"],
                user,
                stdin=source,
            )
    except BaseException:
        remove_tree(fresh, staging=folders.staging)
        raise
    data = data_dir(folders)
    old = folders.staging / f".data-old.{os.getpid()}"
    if data.exists() or data.is_symlink():
        os.rename(data, old)
    os.rename(fresh, data)
    _own_dir(data, uid)
    if old.exists() or old.is_symlink():
        remove_tree(old, staging=folders.staging)
