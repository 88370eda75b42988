"""Issue 15 items 6 and 7 through the real CLI: data has a home, disks do not fill.

One cluster of its own, whose machine agent keeps 2 releases per app and sweeps every
0.3 s (agent settings from a TOML file), so 20 deploys show the bound quickly. The app is
examples/sqlite-notes: SQLite in PAAS_DATA_DIR, created by its `release:` phase.

Its apps get uids from a block of their own: this agent's janitor kills the processes of a
departed app's uid, which must never be an app of another cluster running beside it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.local import MACHINE, LocalCluster
from tests.conftest import _kill_recorded, free_port_range, free_ports, short_dir
from tests.e2e.helpers import PAAS, REPO, https_get, logs, paas
from tests.support.isolation_support import uid_range

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-data-disk")]
APP = "notes"
HOST = f"{APP}.localhost"
KEEP = 2
APP_UIDS, _ = uid_range()  # outside the default 70000-79999, this worker's own
AGENT_TOML = f"""
keep_releases = {KEEP}
disk_check_s = 0.3
venv_min_age_s = 0
gone_app_s = 2
app_uids = "{APP_UIDS}-{APP_UIDS + 99}"
"""


class DataCluster(LocalCluster):
    """The local cluster, its machine agent reading `agent.toml` (small keep_releases)."""

    @property
    def agent_toml(self) -> Path:
        return self.state_dir / "agent.toml"

    def _agent_argv(self, role: str, name: str) -> list[str]:
        argv = super()._agent_argv(role, name)
        return [*argv, "--config", str(self.agent_toml)] if role == "machine" else argv


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataCluster]:
    from cli.local import Ports

    previous = os.environ.get("PAAS_CONFIG")
    os.environ["PAAS_CONFIG"] = str(tmp_path_factory.mktemp("cli") / "config.json")
    registry, http, https, proxy, agent_api = free_ports(5)
    try:
        with short_dir("paas-data-") as state:
            started = DataCluster(
                state / "s",
                ports=Ports(
                    registry=registry, http=http, https=https, proxy=proxy, agent_api=agent_api
                ),
                service_ports=free_port_range(),
            )
            started.state_dir.mkdir(parents=True, exist_ok=True)
            started.agent_toml.write_text(AGENT_TOML)
            try:
                started.up()
                yield started
            finally:
                try:
                    started.down(timeout=20)
                finally:
                    _kill_recorded(started)
    finally:
        if previous is None:
            os.environ.pop("PAAS_CONFIG", None)
        else:
            os.environ["PAAS_CONFIG"] = previous


def notes_app(
    root: Path, *, name: str = APP, tag: str = "", min_healthy_s: float | None = None
) -> Path:
    app = root / f"{name}{tag}"
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(REPO / "examples" / "sqlite-notes", app)
    toml = (app / "paas.toml").read_text().replace(f'name = "{APP}"', f'name = "{name}"')
    if min_healthy_s is not None:
        toml = toml.replace("min_healthy_s = 1", f"min_healthy_s = {min_healthy_s:g}")
    (app / "paas.toml").write_text(toml)
    if tag:  # a code change: a new artifact
        (app / "version.txt").write_text(tag)
    return app


def ok(cluster: LocalCluster, *args: str, cwd: Path | None = None) -> str:
    done = paas(cluster, *args, timeout=180, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)
    return done.stdout


def notes(cluster: LocalCluster, host: str = HOST) -> str:
    response = https_get(cluster, host)
    assert response.status_code == 200, response.text + logs(cluster)
    return response.text


def add_note(cluster: LocalCluster, text: str, host: str = HOST) -> None:
    with httpx.Client(verify=False, timeout=10) as client:
        response = client.post(
            f"https://127.0.0.1:{cluster.ports.https}/",
            headers={"Host": host},
            extensions={"sni_hostname": host},
            content=text.encode(),
        )
    assert response.status_code == 201, response.text


def app_dir(cluster: LocalCluster, app: str) -> Path:
    return cluster.state_dir / MACHINE / "apps" / app


def wait_for(what: str, condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_release_phase_writes_data_on_first_deploy_and_it_survives(
    cluster: DataCluster, tmp_path: Path
) -> None:
    out = ok(cluster, "deploy", str(notes_app(tmp_path)), "--timeout", "120")
    assert "database ready at" in out and "/data/notes.sqlite3" in out, out
    add_note(cluster, "first note")
    assert "first note" in notes(cluster)

    data = app_dir(cluster, APP) / "data"
    info = data.stat()
    assert oct(info.st_mode & 0o777) == "0o700"
    if os.geteuid() == 0:
        assert info.st_uid >= 70000  # the app's own uid, not the agent's

    ok(cluster, "deploy", str(notes_app(tmp_path, tag="v2")), "--timeout", "120")
    assert "(release 2)" in notes(cluster) and "first note" in notes(cluster)

    ok(cluster, "config:set", APP, "GREETING=hello", "--timeout", "120")
    page = notes(cluster)
    assert page.startswith("hello (release 3)") and "first note" in page, page

    out = ok(cluster, "ps", APP)
    assert f"pinned to {MACHINE} (data)" in out, out


def test_run_sees_the_data_folder(cluster: DataCluster) -> None:
    out = ok(cluster, "run", APP, "--", "sh", "-c", 'ls "$PAAS_DATA_DIR"')
    assert "notes.sqlite3" in out, out


def test_export_import_round_trip(cluster: DataCluster, tmp_path: Path) -> None:
    exported = tmp_path / "notes.tar.gz"
    with exported.open("wb") as sink:
        done = subprocess.run(
            [PAAS, "data:export", APP], stdout=sink, stderr=subprocess.PIPE, env=cluster.env()
        )
    assert done.returncode == 0, done.stderr.decode()
    with tarfile.open(exported) as archive:
        assert "./notes.sqlite3" in archive.getnames()

    add_note(cluster, "added after the export")
    assert "added after the export" in notes(cluster)
    with exported.open("rb") as source:
        done = subprocess.run(
            [PAAS, "data:import", APP], stdin=source, capture_output=True, env=cluster.env()
        )
    assert done.returncode == 0, done.stderr.decode()
    page = notes(cluster)
    assert "first note" in page and "added after the export" not in page, page

    # A broken archive is refused and changes nothing.
    done = subprocess.run(
        [PAAS, "data:import", APP], input=b"not a tarball", capture_output=True, env=cluster.env()
    )
    assert done.returncode != 0 and "data unchanged" in done.stderr.decode(), done.stderr
    assert "first note" in notes(cluster)


def test_import_cannot_escape_the_data_folder(cluster: DataCluster, tmp_path: Path) -> None:
    """An archive with ../, an absolute path and a link out is unpacked as the app's uid:
    nothing lands outside its data folder, and the registry keeps working."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in ("../../escaped", "/tmp/paas-data-escape-abs"):
            info = tarfile.TarInfo(name)
            info.size = 4
            archive.addfile(info, io.BytesIO(b"evil"))
        link = tarfile.TarInfo("out")
        link.type, link.linkname = tarfile.SYMTYPE, str(app_dir(cluster, APP))
        archive.addfile(link)
        info = tarfile.TarInfo("out/.data-owner")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    body = gzip.compress(buffer.getvalue())
    subprocess.run([PAAS, "data:import", APP], input=body, capture_output=True, env=cluster.env())
    assert not (app_dir(cluster, APP) / "escaped").exists()
    assert not (app_dir(cluster, APP).parent / "escaped").exists()
    assert not Path("/tmp/paas-data-escape-abs").exists()
    assert (app_dir(cluster, APP) / ".data-owner").read_text().strip() != "evil"
    assert notes(cluster).startswith("hello")  # still serving


def test_twenty_deploys_keep_few_releases_and_hosts_shows_disk(
    cluster: DataCluster, tmp_path: Path
) -> None:
    """Each deploy is a whole one (upload, install, release phase, start, health, switch,
    routed), just not slowed down: no health window (min_healthy_s = 0, the bound is what
    is checked here, not the window), the CLI run in-process (tests/e2e/helpers.py)."""
    started = time.monotonic()
    for n in range(20):
        app = notes_app(tmp_path, name="churn", tag=f"c{n}", min_healthy_s=0)
        out = ok(cluster, "deploy", str(app), "--timeout", "120")
        assert f"release v{n + 1} of churn" in out and "routed" in out, out
    releases = app_dir(cluster, "churn") / "releases"

    def bounded() -> bool:
        return len(os.listdir(releases)) <= KEEP

    wait_for(f"at most {KEEP} release folders", bounded)
    kept = sorted(int(v) for v in os.listdir(releases))
    assert kept[-1] == 20, kept
    venvs = os.listdir(app_dir(cluster, "churn") / "venvs")
    assert len(venvs) <= KEEP, venvs
    artifacts = os.listdir(cluster.state_dir / MACHINE / "artifacts")
    assert len(artifacts) <= 2 * KEEP + 1, artifacts  # churn's kept ones and notes'

    hosts = json.loads(ok(cluster, "--json", "hosts"))
    machine = next(h for h in hosts if h["name"] == MACHINE)
    capacity = machine["capacity"]
    assert capacity["disk_total_mb"] > 0 and capacity["disk_free_mb"] > 0, capacity
    assert capacity["state_disk_mb"] is not None, capacity
    table = ok(cluster, "hosts")
    assert "GiB" in table, table
    print(f"20 deploys in {time.monotonic() - started:.1f}s; kept releases {kept}")


def test_deleted_app_leaves_no_data_to_a_new_one(cluster: DataCluster, tmp_path: Path) -> None:
    name = "gone"
    ok(cluster, "deploy", str(notes_app(tmp_path, name=name)), "--timeout", "120")
    add_note(cluster, "secret of the old app", host=f"{name}.localhost")
    ok(cluster, "apps:delete", name, "--yes")

    ok(cluster, "deploy", str(notes_app(tmp_path, name=name, tag="again")), "--timeout", "120")
    page = notes(cluster, host=f"{name}.localhost")
    assert "0 note(s)" in page and "secret" not in page, page
    retired = cluster.state_dir / MACHINE / "retired-data"
    [aside] = [p for p in retired.iterdir() if p.name.startswith(f"{name}.")]
    assert retired.stat().st_mode & 0o777 == 0o700  # out of every app's reach

    # --delete-data removes the data of the app deleted now; the first one's stays aside
    # (deleted without the flag) for an operator.
    out = ok(cluster, "apps:delete", name, "--yes", "--delete-data")
    assert f"data on {MACHINE}: deleted" in out, out
    assert not (app_dir(cluster, name) / "data").exists()
    assert [p for p in retired.iterdir() if p.name.startswith(f"{name}.")] == [aside]

    # Its other folders go once it has had no instance here for gone_app_s.
    def swept() -> bool:
        return not (app_dir(cluster, name) / "releases").exists()

    wait_for("the deleted app's releases to be removed", swept)


def test_low_disk_refuses_new_releases(cluster: DataCluster, tmp_path: Path) -> None:
    """A threshold above the free space stands in for a full disk: the deploy fails with the
    reason, and what ran keeps serving."""
    cluster.agent_toml.write_text(AGENT_TOML + "min_free_mb = 1000000000\n")
    cluster.kill(MACHINE, signal.SIGTERM)
    try:
        cluster.restart(MACHINE)
        wait_for("the app to serve again", lambda: https_get(cluster, HOST).status_code == 200)
        done = paas(
            cluster, "deploy", str(notes_app(tmp_path, tag="full")), "--timeout", "60", timeout=120
        )
        text = done.stdout + done.stderr
        assert done.returncode != 0 and "low on disk" in text, text + logs(cluster)
        assert "min_free_mb = 1000000000" in text, text
        assert "first note" in notes(cluster)  # the active release keeps serving
    finally:
        cluster.agent_toml.write_text(AGENT_TOML)
        cluster.kill(MACHINE, signal.SIGTERM)
        cluster.restart(MACHINE)
