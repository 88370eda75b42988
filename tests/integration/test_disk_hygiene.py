"""Issue 15 items 6 and 7 below the CLI: the data folder (made before anything runs, keyed by
the app's identity, moved aside for a new app of the same name, exported and imported as the
app's uid), the janitor (releases, venvs, artifacts, departed apps), the low-disk refusal,
placement pins and the registry's artifact GC. Real installs (uv), real tar, real uids."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from agent.machine.build.installer import Installer
from agent.machine.run.uids import AppUsers, secure_state_dir
from agent.machine.storage import datadir, disk
from agent.machine.storage.janitor import Janitor
from agent.procs import AppUser
from common.manifest import ManifestError, parse_manifest
from controller.core.placement import HostSlot, place
from controller.store.artifact_gc import collect_artifacts
from tests.support.fake_registry import ArtifactStore
from tests.support.isolation_support import uid_range
from tests.support.registry_app import make_artifact, test_registry

ROOT = os.geteuid() == 0
PROCFILE = "web: python app.py\n"


def _users(state: Path) -> AppUsers:
    secure_state_dir(state, isolated=ROOT)  # app uids pass through its parents (o+x)
    return AppUsers(state, uid_range=uid_range(), isolated=ROOT)


# ---- pure decisions --------------------------------------------------------------------------


def test_low_disk_names_the_threshold() -> None:
    gib = 1 << 30
    assert disk.low_disk(10 * gib, 100 * gib, min_free_mb=1024, min_free_percent=5) is None
    why = disk.low_disk(gib // 2, 100 * gib, min_free_mb=1024, min_free_percent=5)
    assert why is not None and "min_free_mb = 1024" in why
    why = disk.low_disk(3 * gib, 100 * gib, min_free_mb=1024, min_free_percent=5)
    assert why is not None and "min_free_percent = 5" in why


def test_releases_to_keep_keeps_newest_and_in_use() -> None:
    kept = disk.releases_to_keep(range(1, 21), in_use={3}, keep=2)
    assert kept == {19, 20, 3}


def test_manifest_data_flag() -> None:
    assert parse_manifest("data = true\n").data is True
    assert parse_manifest("[app]\nname = 'x'\n").data is None
    with pytest.raises(ManifestError, match="data must be true or false"):
        parse_manifest('data = "yes"\n')


def test_pinned_app_stays_on_its_host_or_nowhere() -> None:
    hosts = [HostSlot("m1"), HostSlot("m2"), HostSlot("m3")]
    placed = place(apps_wanting={"db": 2}, hosts=hosts, current=[], pinned={"db": "m2"})
    assert placed == {"db": ["m2", "m2"]}
    down = [HostSlot("m1"), HostSlot("m2", state="down")]
    assert place(apps_wanting={"db": 1}, hosts=down, current=[], pinned={"db": "m2"}) == {"db": []}


# ---- the data folder -----------------------------------------------------------------------


def test_data_folder_is_made_before_anything_runs_and_kept(tmp_path: Path) -> None:
    store = ArtifactStore()
    installer = Installer(tmp_path / "state", store.download, users=_users(tmp_path / "state"))
    v1 = store.add({"Procfile": PROCFILE, "app.py": "", "requirements.txt": ""})
    v2 = store.add({"Procfile": PROCFILE, "app.py": "# 2", "requirements.txt": ""})

    async def scenario() -> None:
        first = await installer.install(app="shop", version=1, sha256=v1, app_id="7-1")
        assert first.data is not None and first.data.is_dir()
        info = first.data.stat()
        assert info.st_mode & 0o777 == 0o700
        if ROOT:
            assert info.st_uid == installer.users.uid_of("shop")
        (first.data / "db.sqlite3").write_text("rows")
        second = await installer.install(app="shop", version=2, sha256=v2, app_id="7-1")
        assert second.data == first.data
        assert (second.data / "db.sqlite3").read_text() == "rows"

        # Same name, another app identity (the first was deleted): an empty folder.
        third = await installer.install(app="shop", version=1, sha256=v1, app_id="7-2")
        assert third.data is not None and list(third.data.iterdir()) == []
        retired = tmp_path / "state" / "retired-data"
        [aside] = list(retired.iterdir())
        assert aside.name.startswith("shop.7-1.")
        assert (aside / "db.sqlite3").read_text() == "rows"
        assert retired.stat().st_mode & 0o777 == 0o700

        folders = installer.users.folders("shop")
        assert datadir.delete_data(folders, "7-1", state_dir=tmp_path / "state") == 1
        assert list(retired.iterdir()) == []
        assert third.data.is_dir()  # another identity's data is not touched

    asyncio.run(scenario())


@pytest.mark.skipif(not ROOT, reason="tar runs as the app's uid only when the agent is root")
def test_export_import_as_the_app_uid_and_a_hostile_archive(tmp_path: Path) -> None:
    state = tmp_path / "state"
    users = _users(state)
    folders = users.prepare("shop")
    uid = users.uid_of("shop")
    assert uid is not None
    user = AppUser(uid=uid, gid=uid)
    data = datadir.prepare_data(folders, uid=uid, app_id="1-1", state_dir=state)
    (data / "notes.txt").write_text("kept")
    os.chown(data / "notes.txt", uid, uid)

    out = tmp_path / "export.tar.gz"
    datadir.export_to(folders, user, out)
    with tarfile.open(out) as archive:
        assert "./notes.txt" in archive.getnames()

    (data / "notes.txt").write_text("changed")
    datadir.import_from(folders, user, out)
    assert (data / "notes.txt").read_text() == "kept"
    assert (data / "notes.txt").stat().st_uid == uid

    # Not a tarball: refused, nothing changed.
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(datadir.DataError):
        datadir.import_from(folders, user, bad)
    assert (data / "notes.txt").read_text() == "kept"

    # Paths out of the folder and a link to an agent-owned file: the app's uid cannot write
    # outside what it owns, and tar strips ../ and leading /.
    victim = state / "uids.json"
    before = victim.read_bytes() if victim.exists() else None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in ("../../escaped", str(tmp_path / "abs-escaped")):
            info = tarfile.TarInfo(name)
            info.size = 4
            archive.addfile(info, io.BytesIO(b"evil"))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, str(victim)
        archive.addfile(link)
        info = tarfile.TarInfo("link")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    hostile = tmp_path / "hostile.tar.gz"
    hostile.write_bytes(gzip.compress(buffer.getvalue()))
    with contextlib.suppress(datadir.DataError):  # refused or unpacked harmlessly
        datadir.import_from(folders, user, hostile)
    assert not (folders.root / "escaped").exists() and not (state / "escaped").exists()
    assert not (tmp_path / "abs-escaped").exists()
    assert (victim.read_bytes() if victim.exists() else None) == before


# ---- the janitor and the low-disk refusal ------------------------------------------------


def test_janitor_keeps_n_releases_their_venvs_and_artifacts(tmp_path: Path) -> None:
    store = ArtifactStore()
    state = tmp_path / "state"
    installer = Installer(state, store.download, users=_users(state))
    shas = []
    for n in range(1, 9):
        # Every other release changes its requirements: four venvs in all.
        requirements = f"# deps {(n + 1) // 2}\n"
        shas.append(
            store.add({"Procfile": PROCFILE, "app.py": f"# {n}", "requirements.txt": requirements})
        )

    async def install_all() -> None:
        for n, sha in enumerate(shas, start=1):
            await installer.install(app="shop", version=n, sha256=sha)

    asyncio.run(install_all())
    folders = installer.users.folders("shop")
    assert len(os.listdir(folders.venvs)) == 4
    janitor = Janitor(installer, keep_releases=2, venv_min_age_s=0, gone_app_s=3600)
    swept = janitor.sweep({"shop": {(3, shas[2]), (8, shas[7])}}, now=time.monotonic())
    assert sorted(int(v) for v in os.listdir(folders.releases)) == [3, 7, 8]
    assert swept.releases == 5
    # Releases 3, 7 and 8 use the venvs of deps 2 and 4.
    assert len(os.listdir(folders.venvs)) == 2 and swept.venvs == 2
    cached = sorted(p.name.removesuffix(".tar.gz") for p in installer.artifacts_dir.iterdir())
    assert cached == sorted([shas[2], shas[6], shas[7]])
    assert list(folders.staging.iterdir()) == []  # nothing left half-removed

    # A young unused venv is kept (it may be being built).
    young = Janitor(installer, keep_releases=2, venv_min_age_s=3600, gone_app_s=3600)
    (folders.venvs / "fresh").mkdir()
    young.sweep({"shop": {(8, shas[7])}}, now=time.monotonic())
    assert "fresh" in os.listdir(folders.venvs)


def test_janitor_removes_a_departed_app_but_not_its_data(tmp_path: Path) -> None:
    store = ArtifactStore()
    state = tmp_path / "state"
    installer = Installer(state, store.download, users=_users(state))
    sha = store.add({"Procfile": PROCFILE, "app.py": "", "requirements.txt": ""})
    release = asyncio.run(installer.install(app="old", version=1, sha256=sha, app_id="4-4"))
    assert release.data is not None
    (release.data / "keep.db").write_text("x")
    janitor = Janitor(installer, keep_releases=2, venv_min_age_s=0, gone_app_s=5)
    janitor.sweep({}, now=100.0)  # first seen gone now
    assert (state / "apps" / "old" / "releases").exists()
    swept = janitor.sweep({}, now=106.0)
    assert swept.apps == ["old"]
    for name in ("releases", "venvs", "home", "tmp", "cache"):
        assert not (state / "apps" / "old" / name).exists()
    assert (release.data / "keep.db").read_text() == "x"
    assert list(installer.artifacts_dir.iterdir()) == []


def test_low_disk_refuses_a_new_release_but_not_an_installed_one(tmp_path: Path) -> None:
    store = ArtifactStore()
    state = tmp_path / "state"
    sha = store.add({"Procfile": PROCFILE, "app.py": "", "requirements.txt": ""})
    asyncio.run(
        Installer(state, store.download, users=_users(state)).install(
            app="shop", version=1, sha256=sha
        )
    )
    full = Installer(state, store.download, users=_users(state), min_free_mb=10**9)
    new = store.add({"Procfile": PROCFILE, "app.py": "# 2", "requirements.txt": ""})
    with pytest.raises(disk.LowDisk, match=r"low on disk .*min_free_mb = 1000000000"):
        asyncio.run(full.install(app="shop", version=2, sha256=new))
    assert not (state / "apps" / "shop" / "releases" / "2").exists()
    again = asyncio.run(full.install(app="shop", version=1, sha256=sha))  # a restart: fine
    assert again.path.is_dir()


def test_remove_tree_unlinks_a_link_never_its_target(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "file").write_text("x")
    app = tmp_path / "app"
    app.mkdir()
    (app / "releases").symlink_to(target)
    assert disk.remove_tree(app / "releases", staging=tmp_path / "staging")
    assert (target / "file").read_text() == "x"


# ---- the registry's artifact GC -----------------------------------------------------------


def test_registry_collects_unreferenced_artifacts_after_the_grace(tmp_path: Path) -> None:
    with test_registry(tmp_path) as reg:
        reg.join("m1")
        reg.create_app("shop")
        files = {"Procfile": "web: x\n", "app.py": "# used"}
        used = reg.upload(make_artifact(files))
        response = reg.client.post(
            "/v1/apps/shop/releases", json={"artifact_sha256": used}, headers=reg.admin
        )
        assert response.status_code == 201, response.text
        orphan = reg.upload(make_artifact({"Procfile": "web: x\n", "app.py": "# orphan"}))
        ctx = reg.client.app.state.ctx  # type: ignore[attr-defined]
        assert collect_artifacts(ctx, grace_s=3600) == []  # an upload in progress is safe
        assert collect_artifacts(ctx, grace_s=0, now=time.time() + 1) == [orphan]
        assert not ctx.artifacts.exists(orphan) and ctx.artifacts.exists(used)
        assert reg.client.head(f"/v1/artifacts/{orphan}", headers=reg.admin).status_code == 404


# ---- the agent API's data routes ------------------------------------------------------------


def test_data_routes_need_the_registry_signature_and_bound_imports(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from agent.machine.api.data import MAX_IMPORT_BYTES, DataAccess
    from agent.machine.api.server import AgentApi
    from agent.machine.run.logs import LogFollowers, LogStore
    from common.agent_auth import SignedAuth, api_key

    state = tmp_path / "state"
    users = _users(state)
    folders = users.prepare("shop")
    uid = users.uid_of("shop")
    data = datadir.prepare_data(folders, uid=uid, app_id="3-3", state_dir=state)
    (data / "rows").write_text("1")
    token = tmp_path / "host-token"
    token.write_text("host-secret")

    async def no_runs(app: str) -> object:
        raise AssertionError("not called")

    api = AgentApi(
        host_name="m1",
        token_file=token,
        store=LogStore(tmp_path / "logs"),
        followers=LogFollowers(),
        run_target=no_runs,  # type: ignore[arg-type]
        run_timeout_s=5,
        data=lambda app: DataAccess(
            folders=users.folders(app),
            user=AppUser(uid=uid, gid=uid) if uid is not None else None,
            state_dir=state,
        ),
    )
    good, other = SignedAuth(api_key("host-secret")), SignedAuth(api_key("another-host"))
    with TestClient(api.app) as http:
        assert http.get("/v1/data/shop").status_code == 401
        assert http.get("/v1/data/shop", auth=other).status_code == 401
        assert http.delete("/v1/data/shop", params={"app_id": "3-3"}).status_code == 401
        too_big = {"content-length": str(MAX_IMPORT_BYTES + 1)}
        refused = http.put("/v1/data/shop", content=b"x", headers=too_big, auth=good)
        assert refused.status_code in (401, 413)  # refused before the body is read
        assert http.get("/v1/data/Bad..Name", auth=good).status_code == 422
        bad_id = http.delete("/v1/data/shop", params={"app_id": "../x"}, auth=good)
        assert bad_id.status_code == 422
        exported = http.get("/v1/data/shop", auth=good)
        assert exported.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(exported.content)) as archive:
            assert "./rows" in archive.getnames()
        assert (data / "rows").read_text() == "1"  # nothing changed by the refusals
        assert list(folders.staging.iterdir()) == []  # the export's temp file is gone
