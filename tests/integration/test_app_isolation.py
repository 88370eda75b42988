"""Issue 12, done for real as root: every app builds and runs as its own unprivileged uid.

- an in-tree build backend named by requirements.txt (`./evilpkg`) runs as the app's uid and
  can neither read the host token nor write into the agent's state;
- app A cannot read app B's /proc/<pid>/environ, release folder or logs, nor kill it;
- app B never gets a venv (or uv cache) built from app A's `--find-links ./wheels`;
- a Procfile with 500 process types is refused before anything is built.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

import pytest

from agent import procs
from agent.errors import InstallError
from agent.machine.build.installer import Installer
from agent.machine.run.launcher import AppLauncher, instance_env
from tests.support.isolation_support import isolated_state, wheel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="app uids need a root agent")

EVIL_BACKEND = """
import json, os
report = {{"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(),
          "home": os.environ.get("HOME"), "cache": os.environ.get("UV_CACHE_DIR"),
          "tmp": os.environ.get("TMPDIR"), "agent_secret": os.environ.get("PAAS_TEST_SECRET")}}
for name, path in (("token", {token!r}), ("desired", {desired!r})):
    try:
        report[name] = open(path).read()
    except OSError as exc:
        report[name] = type(exc).__name__
try:
    with open({marker!r}, "w") as out:
        out.write("pwned")
    report["marker"] = "written"
except OSError as exc:
    report["marker"] = type(exc).__name__
with open(os.path.join(os.environ["HOME"], "evil-report.json"), "w") as out:
    json.dump(report, out)
raise SystemExit("the evil backend ran")
"""

EVIL_PYPROJECT = """
[build-system]
requires = []
build-backend = "evil_backend"
backend-path = ["."]

[project]
name = "evilpkg"
version = "1.0"
"""


def test_build_backend_runs_as_the_app_uid_and_cannot_touch_the_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAAS_TEST_SECRET", "agent-env-secret")  # the agent's env: not passed
    with isolated_state() as (state, users, installer, store):
        backend = EVIL_BACKEND.format(
            token=str(state / "host-token"),
            desired=str(state / "desired.json"),
            marker=str(state / "pwned"),
        )
        sha = store.add(
            {
                "Procfile": "web: python app.py\n",
                "app.py": "print('hi')\n",
                "requirements.txt": "./evilpkg\n",
                "evilpkg/pyproject.toml": EVIL_PYPROJECT,
                "evilpkg/evil_backend.py": backend,
            }
        )
        with pytest.raises(InstallError, match="installing the requirements failed"):
            asyncio.run(installer.install(app="evil", version=1, sha256=sha))
        uid = users.uid_of("evil")
        assert uid is not None and uid >= 70000
        folders = users.folders("evil")
        report = json.loads((folders.home / "evil-report.json").read_text())
        assert report["uid"] == report["euid"] == uid
        assert report["groups"] in ([], [uid])
        assert report["token"] == "PermissionError"
        assert report["desired"] == "PermissionError"
        assert report["marker"] == "PermissionError"
        assert not (state / "pwned").exists()
        assert report["agent_secret"] is None
        assert report["home"] == str(folders.home)
        assert report["cache"] == str(folders.cache / "uv")  # the app's own uv cache
        assert report["tmp"] == str(folders.tmp)
        # The app's folders are its own and closed to others; the agent's state is not listable.
        for folder in (folders.releases, folders.venvs, folders.home, folders.tmp, folders.cache):
            info = folder.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (uid, 0o700), folder
        # Around them the agent's: passable, not listable, and its staging not even that.
        info = folders.root.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o711)
        info = folders.staging.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o700)
        assert stat.S_IMODE(state.stat().st_mode) == 0o711
        for private in ("logs", "run", "artifacts"):
            assert stat.S_IMODE((state / private).stat().st_mode) == 0o700, private


def _start(
    state: Path, users, installer, store, app: str, secret: str
) -> tuple[procs.Child, Path, procs.AppUser]:  # type: ignore[no-untyped-def]
    sha = store.add(
        {"Procfile": "web: sleep 60\n", "app.py": f"SECRET = {secret!r}\n", "requirements.txt": ""}
    )
    release = asyncio.run(installer.install(app=app, version=1, sha256=sha))
    user = installer.app_user(app)
    assert user is not None
    folders = users.folders(app)
    env = instance_env(
        {"SECRET": secret},
        port=None,
        venv=release.venv,
        home=folders.home,
        tmp=folders.tmp,
        user=f"app-{app}",
    )
    log = state / "logs" / app / "1.log"
    launcher = AppLauncher("echo started; exec sleep 60", release, env=env, log_path=log, user=user)
    child = launcher.spawn()
    deadline = time.monotonic() + 10
    while b"started" not in log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    return child, release.path, user


def test_one_app_cannot_reach_another_apps_secrets_code_logs_or_processes() -> None:
    with isolated_state() as (state, users, installer, store):
        a, _, a_user = _start(state, users, installer, store, "alpha", "alpha-secret")
        b, b_release, b_user = _start(state, users, installer, store, "bravo", "bravo-secret")
        try:
            assert a_user.uid != b_user.uid
            # What B's process holds, seen as root (so the probes below are meaningful).
            assert b"SECRET=bravo-secret" in Path(f"/proc/{b.pid}/environ").read_bytes()
            probe = (
                'cat "/proc/$VICTIM/environ" >/dev/null 2>&1 && echo environ-read;'
                'ls "$RELEASE" >/dev/null 2>&1 && echo release-listed;'
                'cat "$RELEASE/app.py" 2>/dev/null;'
                'cat "$LOG" >/dev/null 2>&1 && echo log-read;'
                'ls "$STATE/logs" >/dev/null 2>&1 && echo logs-listed;'
                'cat "$STATE/host-token" 2>/dev/null;'
                'kill -9 "$VICTIM" 2>/dev/null && echo killed;'
                "id -u; echo probed"
            )
            result = procs.run(
                ["/bin/sh", "-c", probe],
                timeout_s=30,
                env={
                    "PATH": "/usr/bin:/bin",
                    "VICTIM": str(b.pid),
                    "RELEASE": str(b_release),
                    "LOG": str(state / "logs" / "bravo" / "1.log"),
                    "STATE": str(state),
                },
                cwd=users.folders("alpha").home,
                user=a_user,
            )
            assert result.output.split() == [str(a_user.uid), "probed"], result.output
            assert b.poll() is None  # B still runs
            assert a.poll() is None
        finally:
            a.stop(grace_s=2.0)
            b.stop(grace_s=2.0)


def test_an_app_never_reuses_a_venv_built_from_another_apps_wheels() -> None:
    requirements = "--no-index\n--find-links ./wheels\nshared-dep==1.0\n"
    with isolated_state() as (_state, users, installer, store):
        releases = {}
        for app, value in (("alpha", "evil from alpha"), ("bravo", "bravo's own")):
            name, data = wheel("shared_dep", "1.0", f"VALUE = {value!r}\n")
            sha = store.add(
                {
                    "Procfile": "web: python app.py\n",
                    "app.py": "",
                    "requirements.txt": requirements,  # the same text: the same venv key
                    f"wheels/{name}": data,
                }
            )
            releases[app] = asyncio.run(installer.install(app=app, version=1, sha256=sha))
        assert releases["alpha"].venv.name == releases["bravo"].venv.name  # same key ...
        assert releases["alpha"].venv != releases["bravo"].venv  # ... but each app its own
        for app, value in (("alpha", "evil from alpha"), ("bravo", "bravo's own")):
            user = installer.app_user(app)
            out = procs.run(
                [
                    str(releases[app].venv / "bin" / "python"),
                    "-c",
                    "import shared_dep as d; print(d.VALUE)",
                ],
                timeout_s=30,
                env={"PATH": "/usr/bin:/bin", "HOME": str(users.folders(app).home)},
                cwd=users.folders(app).home,
                user=user,
            )
            assert out.output.strip() == value
            assert (users.folders(app).cache / "uv").is_dir()  # per-app uv cache


def test_a_procfile_with_500_process_types_is_refused() -> None:
    with isolated_state() as (state, _users, installer, store):
        procfile = "web: python app.py\n" + "".join(f"w{i}: sleep 1\n" for i in range(499))
        sha = store.add({"Procfile": procfile, "app.py": ""})
        with pytest.raises(InstallError, match="process types; an app may declare at most 16"):
            asyncio.run(installer.install(app="many", version=1, sha256=sha))
        assert not installer.release_dir("many", 1).exists()
        assert list((state / "apps" / "many" / ".staging").iterdir()) == []


def test_a_release_bigger_than_the_unpacked_limit_is_refused() -> None:
    with isolated_state() as (state, users, _installer, store):
        small = Installer(state, store.download, users=users, max_unpacked_bytes=64 << 10)
        sha = store.add({"Procfile": "web: python app.py\n", "big.bin": b"\0" * (256 << 10)})
        with pytest.raises(InstallError, match="more than the limit"):
            asyncio.run(small.install(app="big", version=1, sha256=sha))
        assert not small.release_dir("big", 1).exists()
        assert list((state / "apps" / "big" / ".staging").iterdir()) == []


def test_the_venv_spec_is_read_before_the_app_owns_its_release() -> None:
    """What decides the venv is read while the release is the agent's alone (staging): the
    app may later swap its requirements.txt for a link to the host token, and a restarted
    agent still never reads through it."""
    with isolated_state() as (state, users, installer, store):
        sha = store.add({"Procfile": "web: python app.py\n", "requirements.txt": ""})
        first = asyncio.run(installer.install(app="swap", version=1, sha256=sha))
        requirements = first.path / "requirements.txt"
        requirements.unlink()
        requirements.symlink_to(state / "host-token")
        restarted = Installer(state, store.download, users=users)
        again = asyncio.run(restarted.install(app="swap", version=1, sha256=sha))
        assert again.venv == first.venv
        saved = (state / "specs" / "swap" / "1.json").read_text()
        assert "TOP-SECRET" not in saved and sha in saved


def test_app_uids_reach_build_tools_in_a_checkout_under_a_private_folder(tmp_path: Path) -> None:
    """A checkout cloned into `mktemp -d` (0700): the agent's uv and python live under it, and
    a build as the app's uid could not exec them. The agent lets app uids pass (o+x only)."""
    from agent.machine.run.uids import let_apps_pass

    checkout = tmp_path / "clone"
    tool = checkout / ".venv" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho reached\n")
    tool.chmod(0o755)
    checkout.chmod(0o700)
    tmp_path.chmod(0o700)
    as_app = ["setpriv", "--reuid=70999", "--regid=70999", "--clear-groups", str(tool)]
    assert procs.run(as_app, timeout_s=10, check=False).returncode != 0
    let_apps_pass(tool, what="the build tools")
    assert stat.S_IMODE(checkout.stat().st_mode) == 0o701  # search only, no listing
    assert procs.run(as_app, timeout_s=10).output.strip() == "reached"
