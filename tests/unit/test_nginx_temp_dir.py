"""Where nginx's temp folders go when its workers (www-data) cannot reach the state folder:
SHARED_TEMP_ROOT/<id>, root 0711 above a 0700 folder of the worker user. Never /tmp or
/var/tmp, which systemd's PrivateTmp replaces under an adopted nginx when the agent restarts.
A symlink or another user's folder planted at that path is refused, not followed."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from agent.errors import ProxyError
from agent.proxy.nginx import process as nginx_process
from agent.proxy.nginx.process import NginxProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to the worker user needs root")
WORKER = "www-data" if "www-data" in {p.pw_name for p in pwd.getpwall()} else "nobody"


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "paas-nginx"
    monkeypatch.setattr(nginx_process, "SHARED_TEMP_ROOT", root)
    return root


def _closed_prefix(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    state.chmod(0o700)  # the worker user cannot enter it
    return state / "nginx"


def test_temp_folders_go_to_a_worker_owned_folder_outside_the_state(
    tmp_path: Path, shared: Path
) -> None:
    process = NginxProcess(_closed_prefix(tmp_path), worker_user=WORKER)
    process.prepare()
    assert process.temp_dir.parent == shared
    parent, own = shared.stat(), process.temp_dir.stat()
    assert (stat.S_IMODE(parent.st_mode), parent.st_uid) == (0o711, 0)
    assert (stat.S_IMODE(own.st_mode), own.st_uid) == (0o700, pwd.getpwnam(WORKER).pw_uid)
    assert process.paths().temp == str(process.temp_dir)
    process.prepare()  # idempotent: a restarted agent finds it as it was
    assert process.temp_dir.stat().st_uid == pwd.getpwnam(WORKER).pw_uid


def test_a_planted_symlink_or_foreign_folder_is_refused(tmp_path: Path, shared: Path) -> None:
    process = NginxProcess(_closed_prefix(tmp_path), worker_user=WORKER)
    shared.mkdir(mode=0o711)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    process.temp_dir.symlink_to(elsewhere)
    with pytest.raises(ProxyError, match="not a folder of root"):
        process.prepare()
    assert elsewhere.stat().st_uid == 0  # not handed to the worker user through the link
    process.temp_dir.unlink()
    process.temp_dir.mkdir()
    os.chown(process.temp_dir, 12345, 12345)  # some other user's folder
    with pytest.raises(ProxyError, match="not a folder of root"):
        process.prepare()
    assert process.temp_dir.stat().st_uid == 12345  # untouched


def test_a_reachable_prefix_keeps_its_temp_inside(tmp_path: Path, shared: Path) -> None:
    process = NginxProcess(tmp_path / "nginx", worker_user=None)
    process.prepare()
    assert process.temp_dir == tmp_path / "nginx" / "temp" and not shared.exists()
