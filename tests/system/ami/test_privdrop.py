"""Apps never run as root: each app process becomes its app's own uid, against real processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent import procs
from agent.machine.build.installer import InstalledRelease
from agent.machine.run.launcher import AppLauncher, instance_env
from agent.settings import AgentSettings
from tests.conftest import short_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
UID = 70999  # in the default app range; no process runs as it


def _settings(**extra: object) -> AgentSettings:
    base = {
        "role": "machine",
        "registry_url": "http://127.0.0.1:1",
        "name": "h",
        "state_dir": "/tmp/x",
    }
    return AgentSettings(**base, **extra)


def test_app_uids_setting_and_deprecated_run_as_user() -> None:
    assert _settings().app_uid_bounds == (70000, 79999)
    assert _settings(app_uids="80000-80010").app_uid_bounds == (80000, 80010)
    for bad in ("0-10", "900-2000", "80010-80000", "abc"):
        with pytest.raises(ValidationError, match="app_uids"):
            _settings(app_uids=bad)
    # Still accepted (settings files written by older images), but no longer used.
    assert _settings(run_as_user="paas-app").run_as_user == "paas-app"


def _wait_for(path: Path, text: str) -> str:
    deadline = time.monotonic() + 10
    while text not in path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.read_text()


def test_app_process_runs_as_its_uid_without_groups_or_privileges() -> None:
    with short_dir("paas-drop-") as folder:
        os.chmod(folder, 0o711)  # the app uid must reach its release folder
        release = folder / "release"
        release.mkdir()
        os.chown(release, UID, UID)
        home = folder / "home"
        env = instance_env(
            {"LD_PRELOAD": "/nonexistent.so"}, port=1, venv=folder / "venv", home=home
        )
        log = folder / "logs" / "app.log"
        launcher = AppLauncher(
            'echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) done"; exec sleep 30',
            InstalledRelease(app="a", version=1, path=release, venv=folder / "venv"),
            env=env,
            log_path=log,
            user=procs.AppUser(uid=UID, gid=UID),
        )
        child = launcher.spawn()
        try:
            # No root groups either: only its own gid.
            assert f"uid={UID} gid={UID} groups={UID} done" in _wait_for(log, "done")
            status = Path(f"/proc/{child.pid}/status").read_text()
            assert f"Uid:\t{UID}\t{UID}\t{UID}\t{UID}" in status
            assert f"Gid:\t{UID}\t{UID}\t{UID}\t{UID}" in status
            assert "NoNewPrivs:\t1" in status
            assert "CapEff:\t0000000000000000" in status
            assert "CapPrm:\t0000000000000000" in status
            # The app's environment reached the app (LD_PRELOAD included: harmless as the app),
            # never the root wrapper, and no secret is on the command line.
            environ = Path(f"/proc/{child.pid}/environ").read_bytes()
            assert b"LD_PRELOAD=/nonexistent.so" in environ
            assert log.stat().st_uid == 0  # the agent opens the log: the app cannot remove it
            assert (log.stat().st_mode & 0o777) == 0o600
        finally:
            child.stop(grace_s=2.0)


def test_a_one_shot_command_runs_as_the_app_uid() -> None:
    with short_dir("paas-drop-") as folder:
        os.chmod(folder, 0o711)
        result = procs.run(
            ["id", "-u"],
            timeout_s=30,
            env={"PATH": "/usr/bin:/bin"},
            cwd=folder,
            user=procs.AppUser(uid=UID, gid=UID),
        )
        assert result.output.strip() == str(UID)
        with pytest.raises(procs.ProcessError, match="status 127") as caught:
            procs.run(
                ["no-such-command-here"],
                timeout_s=30,
                env={"PATH": "/usr/bin:/bin"},
                cwd=folder,
                user=procs.AppUser(uid=UID, gid=UID),
            )
        assert "could not start the process" in caught.value.output
