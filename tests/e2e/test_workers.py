"""Workers and the release phase through the real CLI.

A `worker:` Procfile line runs beside web, is restarted after kill -9, switches with the
release on redeploy, and a crashing worker fails the deploy while the previous release keeps
serving (0 failed requests through the frontend). A `release:` line runs once before the new
release starts; exit 3 fails the deploy and leaves the previous release serving."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.local import LocalCluster
from tests.conftest import short_dir
from tests.e2e.helpers import REPO, answer_now, logs, paas
from tests.e2e.request_loop import RequestLoop, sent_more

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-2")]
APP = "workers"
HOST = f"{APP}.localhost"

# Appends "<release> <pid>" to the file named on its command line every 0.2 s.
WORKER = """import os, sys, time
path = sys.argv[1]
while True:
    with open(path, "a") as out:
        out.write(f"{os.environ.get('PAAS_RELEASE')} {os.getpid()} {os.environ.get('PORT')}\\n")
    time.sleep(0.2)
"""


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Overrides pytest's: each app runs as its own uid, so the beats file lives in a folder
    app users may write (sticky and world-writable, like /tmp), which the test reads."""
    with short_dir("paas-workers-") as folder:
        os.chmod(folder, 0o1777)
        yield folder


def make_app(
    root: Path, beats: Path, *, worker: str | None = None, release: str | None = None
) -> Path:
    app = root / APP
    shutil.copytree(REPO / "examples" / "hello", app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "paas.toml").write_text(f'[app]\nname = "{APP}"\nmin_healthy_s = 1\n')
    (app / "worker.py").write_text(WORKER)
    command = worker or f"python worker.py {beats}"
    procfile = f"web: python app.py\nworker: {command}\n"
    if release is not None:
        procfile += f"release: {release}\n"
    (app / "Procfile").write_text(procfile)
    return app


def beats_of(path: Path) -> list[tuple[str, int, str]]:
    if not path.is_file():
        return []
    found = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            found.append((parts[0], int(parts[1]), parts[2]))
    return found


def wait_for(what: str, check, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_worker_runs_restarts_and_switches(cluster: LocalCluster, tmp_path: Path) -> None:
    beats = tmp_path / "beats"
    done = paas(cluster, "deploy", str(make_app(tmp_path / "v1", beats)))
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    assert "'worker' runs as a worker" in done.stdout + done.stderr
    answer_now(cluster, HOST, "release 1")
    first = wait_for("a beat of release 1", lambda: [b for b in beats_of(beats) if b[0] == "1"])
    assert first[0][2] == "None"  # no PORT for a worker
    ps = paas(cluster, "ps", APP)
    assert "worker" in ps.stdout and "web" in ps.stdout, ps.stdout

    old_pid = first[-1][1]
    os.kill(old_pid, signal.SIGKILL)
    wait_for(
        "the killed worker to be restarted",
        lambda: [b for b in beats_of(beats) if b[1] != old_pid and b[0] == "1"],
    )

    done = paas(cluster, "deploy", str(make_app(tmp_path / "v2", beats)))
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    answer_now(cluster, HOST, "release 2")
    wait_for("a beat of release 2", lambda: [b for b in beats_of(beats) if b[0] == "2"])
    v1_pids = {b[1] for b in beats_of(beats) if b[0] == "1"}
    wait_for("release 1's worker to stop", lambda: not any(alive(p) for p in v1_pids))
    count = len(beats_of(beats))
    wait_for("more beats", lambda: len(beats_of(beats)) >= count + 4)
    later = beats_of(beats)[count:]
    assert later and all(b[0] == "2" for b in later), later

    scaled = paas(cluster, "ps:scale", APP, "worker=0", "web=1")
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    assert "worker=0" in scaled.stdout
    v2_pids = {b[1] for b in beats_of(beats) if b[0] == "2"}
    wait_for("the scaled-down worker to stop", lambda: not any(alive(p) for p in v2_pids))
    assert paas(cluster, "ps:scale", APP, "worker=1").returncode == 0


def test_crashing_worker_fails_the_deploy_and_web_keeps_serving(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    beats = tmp_path / "beats"
    app = make_app(
        tmp_path / "v3", beats, worker="python -c 'import sys; sys.exit(\"worker boom\")'"
    )
    with RequestLoop(cluster, HOST, expect="release 2") as loop:
        done = paas(cluster, "deploy", str(app), "--timeout", "120")
        sent_more(loop, 10)  # still answered after the failed deploy
    assert done.returncode != 0, done.stdout + done.stderr
    assert "worker boom" in done.stdout + done.stderr, done.stdout + done.stderr + logs(cluster)
    assert loop.sent > 10 and not loop.failures, loop.summary()
    answer_now(cluster, HOST, "release 2")


def test_release_phase_runs_before_the_new_release(cluster: LocalCluster, tmp_path: Path) -> None:
    """`release:` runs once, in the new release's environment (venv on PATH, config vars),
    before any instance of it starts: its line comes before the new workers' beats."""
    beats = tmp_path / "beats"
    marker = 'echo "phase $PAAS_RELEASE $(command -v python)" >> ' + str(beats)
    done = paas(cluster, "deploy", str(make_app(tmp_path / "v4", beats, release=marker)))
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    stages = [line.split()[0:2] for line in done.stdout.splitlines() if line.strip()]
    assert ["release", "phase"] in stages, done.stdout
    version = answer_now(cluster, HOST, "Hello from").split("release ")[1].split(")")[0]
    lines = beats.read_text().splitlines()
    phase = [n for n, line in enumerate(lines) if line.startswith("phase ")]
    assert len(phase) == 1, lines
    assert lines[phase[0]].split()[1] == version and "/venv" in lines[phase[0]], lines[phase[0]]
    first_beat = next(n for n, line in enumerate(lines) if line.startswith(f"{version} "))
    assert phase[0] < first_beat


def test_failing_release_phase_keeps_the_previous_release(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    beats = tmp_path / "beats"
    failing = "echo migration went wrong; exit 3"
    app = make_app(tmp_path / "v5", beats, release=failing)
    with RequestLoop(cluster, HOST, expect="Hello from") as loop:
        done = paas(cluster, "deploy", str(app), "--timeout", "120")
        sent_more(loop, 10)  # still answered after the failed deploy
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "exited with status 3" in out and "migration went wrong" in out, out + logs(cluster)
    assert loop.sent > 10 and not loop.failures, loop.summary()
    assert not beats.exists(), beats.read_text()  # no worker of the failed release started
    releases = paas(cluster, "releases", APP, "--json")
    assert '"failed"' in releases.stdout and '"active"' in releases.stdout
