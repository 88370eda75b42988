"""Apps never run as root: the machine agent's `run_as_user` drop, against real processes."""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.installer import InstalledRelease
from agent.launcher import AppLauncher, instance_env
from agent.settings import AgentSettings
from tests.conftest import short_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
USER = "nobody"


def _settings(**extra: object) -> AgentSettings:
    base = {"role": "machine", "registry_url": "http://r:1", "name": "h", "state_dir": "/tmp/x"}
    return AgentSettings(**base, **extra)


def test_run_as_user_must_be_an_unprivileged_user() -> None:
    assert _settings(run_as_user=USER).run_as_user == USER
    with pytest.raises(ValidationError, match="is root"):
        _settings(run_as_user="root")
    with pytest.raises(ValidationError, match="not a user on this host"):
        _settings(run_as_user="no-such-user-here")


def test_app_process_runs_as_the_unprivileged_user() -> None:
    entry = pwd.getpwnam(USER)
    with short_dir("paas-drop-") as folder:
        os.chmod(folder, 0o755)  # the app user must reach its release folder
        release = folder / "release"
        release.mkdir()
        home = folder / "home"
        env = instance_env({}, port=1, venv=folder / "venv", home=home)
        log = folder / "app.log"
        launcher = AppLauncher(
            "echo uid=$(id -u) groups=$(id -G) done; exec sleep 30",
            InstalledRelease(app="a", version=1, path=release, venv=folder / "venv"),
            env=env,
            log_path=log,
            user=USER,
        )
        child = launcher.spawn()
        try:
            deadline = time.monotonic() + 10
            while "done" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            # No root groups either: only the user's own.
            assert f"uid={entry.pw_uid} groups={entry.pw_gid} done" in log.read_text()
            status = Path(f"/proc/{child.pid}/status").read_text()
            assert f"Uid:\t{entry.pw_uid}\t{entry.pw_uid}\t{entry.pw_uid}" in status
            assert home.stat().st_uid == entry.pw_uid  # its only writable folder
            assert log.stat().st_uid == 0  # the agent opens the log: the app cannot remove it
        finally:
            child.stop(grace_s=2.0)
