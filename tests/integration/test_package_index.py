"""Issue 15 item 9: hosts behind a package mirror or offline. A real wheel, served from a
folder (`find_links` + `no_index`) and from a PEP 503 simple index on a loopback port
(`index_url`, with credentials that must never show), installed for real through the agent's
build path as the app's own uid. Without the settings the same build fails, naming the
package. Traffic stays on loopback (the no-settings build runs uv offline).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.errors import InstallError
from agent.machine.build import installer as installer_module
from agent.machine.build.installer import Installer
from agent.machine.build.package_index import PackageIndex, PackageIndexError, redact
from agent.settings import AgentSettings
from tests.conftest import free_port, short_dir
from tests.support.isolation_support import isolated_state, wheel

ROOT = os.geteuid() == 0
PROBE = "paas_mirror_probe"
REQUIREMENT = "paas-mirror-probe"
SECRET = "s3cr3t-mirror-token"


@contextmanager
def wheel_folder() -> Iterator[tuple[Path, str]]:
    """A folder every uid can read holding one tiny wheel; (folder, wheel file name)."""
    with short_dir("paas-wheels-") as root:
        root.chmod(0o755)
        name, data = wheel(PROBE, "1.0", "ANSWER = 42\n")
        (root / "files").mkdir(mode=0o755)
        (root / "files" / name).write_bytes(data)
        (root / "files" / name).chmod(0o644)
        digest = hashlib.sha256(data).hexdigest()
        project = root / "simple" / REQUIREMENT
        project.mkdir(parents=True, mode=0o755)
        (root / "simple").chmod(0o755)
        (project / "index.html").write_text(
            f'<html><body><a href="/files/{name}#sha256={digest}">{name}</a></body></html>\n'
        )
        (root / "simple" / "index.html").write_text(
            f'<html><body><a href="{REQUIREMENT}/">{REQUIREMENT}</a></body></html>\n'
        )
        yield root, name


@contextmanager
def simple_index(root: Path) -> Iterator[tuple[int, Path]]:
    """`python -m http.server` on a free loopback port serving `root`; (port, its log)."""
    port = free_port()
    log_path = root.parent / f"{root.name}.http.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
            cwd=root,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the test index did not start") from None
                time.sleep(0.05)
        yield port, log_path
    finally:
        server.terminate()
        server.wait(timeout=10)
        log_path.unlink(missing_ok=True)


def _app(store) -> str:  # type: ignore[no-untyped-def]
    return store.add(
        {
            "Procfile": "web: python app.py\n",
            "app.py": f"import {PROBE}\nprint({PROBE}.ANSWER)\n",
            "requirements.txt": f"{REQUIREMENT}==1.0\n",
        }
    )


def _imports_probe(venv: Path) -> str:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import {PROBE}; print({PROBE}.ANSWER)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


# ---- for real, as the app's uid ---------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="builds as an app uid need a root agent")
def test_offline_host_installs_from_a_find_links_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UV_OFFLINE", "1")  # no index reachable: only what the folder holds
    with wheel_folder() as (wheels, _), isolated_state() as (state, users, plain, store):
        sha = _app(store)
        # Without the settings: a clear error naming the requirement, nothing kept.
        with pytest.raises(InstallError) as failed:
            asyncio.run(plain.install(app="offline", version=1, sha256=sha))
        text = str(failed.value)
        assert "installing the requirements failed" in text and REQUIREMENT in text
        assert not list(users.folders("offline").venvs.iterdir())
        # With them: installed by the app's uid from the folder.
        index = PackageIndex(find_links=(str(wheels / "files"),), no_index=True)
        installer = Installer(state, store.download, users=users, package_index=index)
        done = asyncio.run(installer.install(app="offline", version=1, sha256=sha))
        assert _imports_probe(done.venv) == "42"
        uid = users.uid_of("offline")
        installed = next(done.venv.glob(f"lib/python*/site-packages/{PROBE}.py"))
        assert installed.stat().st_uid == uid


@pytest.mark.skipif(not ROOT, reason="builds as an app uid need a root agent")
def test_host_behind_a_mirror_installs_from_a_simple_index_and_never_shows_its_token(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        wheel_folder() as (root, wheel_name),
        simple_index(root) as (port, http_log),
        isolated_state() as (state, users, _, store),
    ):
        url = f"http://builder:{SECRET}@127.0.0.1:{port}/simple"
        index = PackageIndex(index_url=url)
        installer = Installer(state, store.download, users=users, package_index=index)
        done = asyncio.run(installer.install(app="mirrored", version=1, sha256=_app(store)))
        assert _imports_probe(done.venv) == "42"
        served = http_log.read_text()
        assert f"GET /simple/{REQUIREMENT}/" in served and f"GET /files/{wheel_name}" in served
        # A requirement the mirror lacks: the error names it and masks the token.
        missing = store.add(
            {"Procfile": "web: python app.py\n", "requirements.txt": "paas-mirror-missing\n"}
        )
        with pytest.raises(InstallError) as failed:
            asyncio.run(installer.install(app="mirrored", version=2, sha256=missing))
        text = str(failed.value)
        assert "paas-mirror-missing" in text
        assert SECRET not in text
        assert SECRET not in caplog.text
        assert SECRET not in index.describe() and "****@127.0.0.1" in index.describe()


@pytest.mark.skipif(not ROOT, reason="builds as an app uid need a root agent")
def test_the_pip_fallback_gets_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installer_module, "find_uv", lambda: None)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the no-settings build stays offline too
    with wheel_folder() as (wheels, _), isolated_state() as (state, users, plain, store):
        python = plain._python
        probe = subprocess.run([python, "-c", "import ensurepip"], capture_output=True, check=False)
        if probe.returncode != 0:
            pytest.skip(f"{python} has no ensurepip: no pip fallback to test")
        sha = _app(store)
        with pytest.raises(InstallError, match=REQUIREMENT):
            asyncio.run(plain.install(app="pipped", version=1, sha256=sha))
        index = PackageIndex(find_links=(str(wheels / "files"),), no_index=True)
        installer = Installer(state, store.download, users=users, package_index=index)
        done = asyncio.run(installer.install(app="pipped", version=1, sha256=sha))
        assert _imports_probe(done.venv) == "42"


# ---- settings: checked once, at start ---------------------------------------------------


def _settings(tmp_path: Path, **values: object) -> AgentSettings:
    return AgentSettings(
        role="machine",
        registry_url="http://127.0.0.1:1",
        name="m1",
        state_dir=tmp_path,
        **values,  # type: ignore[arg-type]
    )


def test_settings_reach_the_build_env_and_args(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        index_url="https://u:p@mirror.internal/simple",
        extra_index_urls=["https://extra.internal/simple", "file:///" + str(tmp_path)],
        find_links=[str(tmp_path)],
        trusted_hosts=["mirror.internal", "extra.internal:8443"],
        build_env={"UV_INDEX_STRATEGY": "unsafe-best-match"},
    )
    index = settings.package_index
    assert index.uv_env() == {
        "UV_INDEX_STRATEGY": "unsafe-best-match",
        "UV_INDEX_URL": "https://u:p@mirror.internal/simple",
        "UV_EXTRA_INDEX_URL": f"https://extra.internal/simple file:///{tmp_path}",
        "UV_FIND_LINKS": str(tmp_path),
        "UV_INSECURE_HOST": "mirror.internal extra.internal:8443",
    }
    assert index.uv_args() == []
    pip = index.pip_env()
    assert pip["PIP_INDEX_URL"] == "https://u:p@mirror.internal/simple"
    assert pip["PIP_TRUSTED_HOST"] == "mirror.internal extra.internal:8443"
    assert "PIP_NO_INDEX" not in pip
    offline = _settings(tmp_path, find_links=[str(tmp_path)], no_index=True).package_index
    assert offline.uv_args() == ["--no-index"] and offline.pip_env()["PIP_NO_INDEX"] == "1"
    assert _settings(tmp_path).package_index.is_default


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"index_url": "ftp://mirror/simple"}, "http://, https:// or file://"),
        ({"index_url": "mirror.internal/simple"}, "http://, https:// or file://"),
        ({"index_url": "https:///simple"}, "names no host"),
        ({"index_url": "https://u:p@mirror/simple x"}, "must not contain spaces"),
        ({"extra_index_urls": ["javascript:alert(1)"]}, "http://, https:// or file://"),
        ({"find_links": ["/nonexistent/wheels"]}, "does not exist"),
        ({"find_links": ["wheels"]}, "absolute path or a URL"),
        ({"find_links": ["file:///nonexistent/wheels"]}, "does not exist"),
        ({"trusted_hosts": ["mirror internal"]}, "host name or host:port"),
        ({"no_index": True}, "no_index needs find_links"),
        ({"build_env": {"LD_PRELOAD": "/tmp/x.so"}}, "UV_\\* or PIP_\\*"),
        ({"build_env": {"UV_CACHE_DIR": "/tmp/shared"}}, "sets it per app"),
    ],
)
def test_bad_index_settings_stop_the_agent_with_one_clear_line(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as failed:
        _settings(tmp_path, **values)
    assert "u:p@" not in str(failed.value)


def test_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAAS_INDEX_URL", "https://mirror.internal/simple")
    monkeypatch.setenv("PAAS_FIND_LINKS", f'["{tmp_path}"]')
    index = _settings(tmp_path).package_index
    assert index.index_url == "https://mirror.internal/simple"
    assert index.find_links == (str(tmp_path),)


def test_redact_masks_credentials_anywhere() -> None:
    text = (
        "error: GET https://builder:tok@mirror/simple/x/ failed\n"
        "Looking in indexes: http://token@10.0.0.1:3141/root/pypi/+simple/"
    )
    shown = redact(text)
    assert "tok" not in shown.replace("token@", "") and "token@" not in shown
    assert "https://****@mirror/simple/x/" in shown
    assert "http://****@10.0.0.1:3141/" in shown
    assert redact("https://mirror/simple a@b.c") == "https://mirror/simple a@b.c"
    with pytest.raises(PackageIndexError):
        PackageIndex(no_index=True)
