"""Installer: artifact cache, safe unpack, venvs keyed by dependencies and reused on code-only
redeploys. Venvs are built for real with uv; one test installs a real tiny PyPI package."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import pytest

from agent.errors import InstallError, UnsafeArchive
from agent.machine.build.envspec import environment_spec, python_identity
from agent.machine.build.installer import Installer
from tests.support.fake_registry import ArtifactStore
from tests.support.mounts import resize, tmpfs


class CountingInstaller(Installer):
    builds: int = 0

    def _build_venv(self, venv: Path, spec, *, app: str) -> None:  # type: ignore[no-untyped-def]
        self.builds += 1
        super()._build_venv(venv, spec, app=app)


APP = "import os\nprint('port', os.environ.get('PORT'))\n"


def test_code_only_redeploy_reuses_the_venv(tmp_path: Path) -> None:
    store = ArtifactStore()
    installer = CountingInstaller(tmp_path, store.download)
    v1 = store.add({"Procfile": "web: python app.py\n", "app.py": APP, "requirements.txt": ""})
    v2 = store.add(
        {"Procfile": "web: python app.py\n", "app.py": APP + "# v2\n", "requirements.txt": ""}
    )

    async def scenario() -> None:
        first = await installer.install(app="shop", version=1, sha256=v1)
        assert installer.builds == 1
        assert first.path == tmp_path / "apps" / "shop" / "releases" / "1"
        assert (first.path / "app.py").read_text() == APP
        assert (first.venv / "bin" / "python").exists()
        inode = (first.venv / "pyvenv.cfg").stat().st_ino

        second = await installer.install(app="shop", version=2, sha256=v2)
        assert installer.builds == 1  # code-only change: no installer run
        assert second.venv == first.venv
        assert (second.venv / "pyvenv.cfg").stat().st_ino == inode
        assert (second.path / "app.py").read_text().endswith("# v2\n")

        # Same release again: nothing downloaded or unpacked twice.
        again = await installer.install(app="shop", version=1, sha256=v1)
        assert again == first
        assert store.downloads == [v1, v2]

    asyncio.run(scenario())
    key = environment_spec(
        tmp_path / "apps/shop/releases/1", python_version=python_identity(installer._python)
    ).key
    out = subprocess.run(
        [
            str(tmp_path / "apps" / "shop" / "venvs" / key / "bin" / "python"),
            "-c",
            "import sys; print(sys.prefix)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "/venvs/" in out


def test_concurrent_installs_build_one_venv(tmp_path: Path) -> None:
    store = ArtifactStore()
    installer = CountingInstaller(tmp_path, store.download)
    sha = store.add({"Procfile": "web: python app.py\n", "app.py": APP})

    async def scenario() -> None:
        results = await asyncio.gather(
            *(installer.install(app="shop", version=3, sha256=sha) for _ in range(3))
        )
        assert len({r.venv for r in results}) == 1

    asyncio.run(scenario())
    assert installer.builds == 1
    assert store.downloads == [sha]
    assert sorted(p.name for p in (tmp_path / "apps" / "shop" / "venvs").iterdir()) == ["none"]


def test_environment_keys(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert environment_spec(tmp_path / "a").key == "none"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "pyproject.toml").write_text(
        '[project]\nname = "b"\ndependencies = ["six==1.16.0"]\n'
    )
    spec_b = environment_spec(tmp_path / "b", python_version="3.11")
    assert spec_b.requirements == "six==1.16.0\n"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "requirements.txt").write_text("six==1.16.0\n")
    spec_c = environment_spec(tmp_path / "c", python_version="3.11")
    assert spec_c.key != spec_b.key != "none"
    assert environment_spec(tmp_path / "c", python_version="3.12").key != spec_c.key
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "pyproject.toml").write_text('[project]\nname = "d"\n')
    assert environment_spec(tmp_path / "d").key == "none"


def test_failed_install_reports_the_installer_output(tmp_path: Path) -> None:
    store = ArtifactStore()
    installer = Installer(tmp_path, store.download)
    sha = store.add({"Procfile": "web: x\n", "requirements.txt": "./no-such-local-package\n"})
    with pytest.raises(InstallError) as caught:
        asyncio.run(installer.install(app="shop", version=1, sha256=sha))
    assert "installing the requirements failed" in str(caught.value)
    assert "no-such-local-package" in str(caught.value)
    venvs = tmp_path / "apps" / "shop" / "venvs"
    assert [p for p in venvs.iterdir() if not p.name.startswith(".")] == []
    assert list(venvs.iterdir()) == []  # the temp build folder is gone


def test_hostile_artifact_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore()
    installer = Installer(tmp_path, store.download)
    sha = store.add({"Procfile": "web: x\n", "../../evil": "x"})
    with pytest.raises(UnsafeArchive):
        asyncio.run(installer.install(app="shop", version=1, sha256=sha))
    assert not (tmp_path / "apps" / "shop" / "releases" / "1").exists()
    assert not (tmp_path / "apps" / "evil").exists()


def _pypi_reachable() -> bool:
    try:
        return httpx.head("https://pypi.org/simple/six/", timeout=3).status_code < 500
    except httpx.HTTPError:
        return False


@pytest.mark.skipif(not _pypi_reachable(), reason="PyPI is not reachable")
def test_real_tiny_pypi_package(tmp_path: Path) -> None:
    store = ArtifactStore()
    installer = CountingInstaller(tmp_path, store.download)
    sha = store.add(
        {
            "Procfile": "web: python app.py\n",
            "app.py": "import six\n",
            "pyproject.toml": '[project]\nname = "shop"\nversion = "1"\n'
            'dependencies = ["six==1.16.0"]\n',
        }
    )
    release = asyncio.run(installer.install(app="shop", version=1, sha256=sha))
    done = subprocess.run(
        [str(release.venv / "bin" / "python"), "-c", "import six; print(six.__version__)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == "1.16.0"
    # The app itself is not installed into the venv: it runs from its folder.
    assert not list(release.venv.glob("lib/python*/site-packages/shop*"))


@pytest.mark.skipif(not _pypi_reachable(), reason="PyPI is not reachable")
def test_requirement_missing_from_pypi_is_named(tmp_path: Path) -> None:
    store = ArtifactStore()
    installer = Installer(tmp_path, store.download)
    sha = store.add({"Procfile": "web: x\n", "requirements.txt": "paas-no-such-package-xyz==1.0\n"})
    with pytest.raises(InstallError) as caught:
        asyncio.run(installer.install(app="shop", version=1, sha256=sha))
    message = str(caught.value)
    assert message.startswith("installing the requirements failed")
    assert "paas-no-such-package-xyz" in message.split("\n", 1)[1]  # the installer's own lines
    assert list((tmp_path / "apps" / "shop" / "venvs").iterdir()) == []


def test_full_disk_while_unpacking_fails_cleanly(tmp_path: Path) -> None:
    """A release that unpacks to more than the disk holds: a clear error, no half-unpacked
    folder; once there is room the same release installs and nothing stale is reused."""
    store = ArtifactStore()
    big = store.add(
        {"Procfile": "web: python app.py\n", "app.py": APP, "data.txt": "a" * (3 << 20)}
    )
    small = store.add({"Procfile": "web: python app.py\n", "app.py": APP})
    with tmpfs(tmp_path / "state", size="2m") as state:
        installer = Installer(state, store.download)
        with pytest.raises(InstallError) as caught:
            asyncio.run(installer.install(app="shop", version=1, sha256=big))
        message = str(caught.value)
        assert message.startswith(f"no space left on the agent's disk ({state})"), message
        assert "unpacking release 1 of shop" in message
        releases = state / "apps" / "shop" / "releases"
        assert list(releases.iterdir()) == []  # no staged, temp or partial folder left
        assert list((state / "apps" / "shop" / ".staging").iterdir()) == []
        # The space is free again: a small release installs on the same disk.
        done = asyncio.run(installer.install(app="shop", version=2, sha256=small))
        assert (done.path / ".paas-artifact").is_file()

        resize(state, "8m")
        again = asyncio.run(installer.install(app="shop", version=1, sha256=big))
        assert (again.path / "data.txt").stat().st_size == 3 << 20
        assert sorted(p.name for p in releases.iterdir()) == ["1", "2"]
