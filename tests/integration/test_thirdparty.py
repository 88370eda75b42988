"""Apps we did not write: the default health-check rule and Host header, Procfile lines that
are not run, Python-version files, and requirements files that include others.

No network: checks hit a real local HTTP server, and the one real install uses a wheel built
in the test, offered with --no-index --find-links."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import socket
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import InstallError
from agent.machine.build.installer import Installer, environment_spec
from agent.machine.health import HealthChecker, check_host, passes
from agent.machine.run.launcher import instance_env
from cli.pack import pack
from common.manifest import parse_procfile, procfile_notices
from tests.support.fake_registry import ArtifactStore

# ---- the pass rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "path", "ok"),
    [
        (200, "/", True),
        (302, "/", True),
        (400, "/", True),  # Django with a Host it does not know, or a plain API
        (404, "/", True),  # an API with no page at /
        (401, "/", True),
        (500, "/", False),
        (503, "/", False),
        (200, "/health", True),
        (301, "/health", True),
        (404, "/health", False),  # a configured path must exist
        (500, "/health", False),
    ],
)
def test_default_path_accepts_non_5xx_configured_path_wants_2xx_3xx(
    status: int, path: str, ok: bool
) -> None:
    assert passes(status, path) is ok


def test_check_host_is_the_first_exact_domain() -> None:
    assert check_host(["shop.paas.test", "shop.example.com"]) == "shop.paas.test"
    assert check_host(["*.example.com", "shop.example.com"]) == "shop.example.com"
    assert check_host([]) is None


# ---- real checks against a Django-like server ----------------------------------------------


class _StrictHost(http.server.BaseHTTPRequestHandler):
    """Answers like Django with ALLOWED_HOSTS = ["shop.paas.test"]: 400 for any other Host."""

    def do_GET(self) -> None:
        if self.headers.get("Host") != "shop.paas.test":
            self.send_response(400)
        elif self.path == "/":
            self.send_response(404)  # no page at /
        else:
            self.send_response(500 if self.path == "/broken" else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def strict_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StrictHost)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _check(port: int, path: str, host: str | None) -> tuple[bool, str]:
    async def run() -> tuple[bool, str]:
        checker = HealthChecker()
        try:
            return await checker.check(port, path, host=host)
        finally:
            await checker.aclose()

    return asyncio.run(run())


def test_check_sends_the_apps_host(strict_server: int) -> None:
    ok, detail = _check(strict_server, "/health", "shop.paas.test")
    assert ok, detail
    ok, detail = _check(strict_server, "/health", None)  # Host 127.0.0.1: Django says 400
    assert not ok
    assert "answered 400 (a pass is 2xx or 3xx)" in detail


def test_default_check_passes_an_app_without_a_page_at_root(strict_server: int) -> None:
    ok, detail = _check(strict_server, "/", "shop.paas.test")
    assert ok, detail
    assert "answered 404" in detail
    ok, detail = _check(strict_server, "/broken", "shop.paas.test")
    assert not ok


def test_nothing_listening_says_to_use_port() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ok, detail = _check(port, "/", "shop.paas.test")
    assert not ok
    assert f"nothing accepts connections on port {port}" in detail
    assert "$PORT" in detail


# ---- Procfile lines and files that are not used ---------------------------------------------


def test_release_and_worker_lines_are_named_with_how_they_run() -> None:
    processes = parse_procfile(
        "web: gunicorn wsgi\nrelease: python manage.py migrate\nworker: celery -A app worker\n"
        "clock: python clock.py\n"
    )
    notices = procfile_notices(processes)
    assert len(notices) == 3
    assert notices[0].startswith("Procfile: 'release' runs once per deploy, on one host, before")
    assert "the previous release keeps running" in notices[0]
    assert notices[1].startswith("Procfile: 'worker' runs as a worker (1 instance unless scaled")
    assert "paas ps:scale APP worker=N" in notices[1] and "no port" in notices[1]
    assert notices[2].startswith("Procfile: 'clock' runs as a worker")
    assert procfile_notices({"web": "gunicorn app:app"}) == []


def test_pack_reports_what_will_not_be_used(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: gunicorn app:app\nrelease: python migrate.py\n")
    (tmp_path / "runtime.txt").write_text("python-3.12.1\n")
    (tmp_path / ".python-version").write_text("3.12\n")
    (tmp_path / "Pipfile").write_text("[packages]\nflask = '*'\n")
    packed = pack(tmp_path)
    packed.path.unlink()
    text = "\n".join(packed.notices)
    assert "'release' runs once per deploy" in text
    assert "runtime.txt: not read; apps run on the hosts' Python" in text
    assert ".python-version: not read" in text
    assert "no requirements.txt or pyproject.toml" in text


def test_pack_of_a_plain_web_app_has_no_notices(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: gunicorn app:app\n")
    (tmp_path / "requirements.txt").write_text("gunicorn\n")
    packed = pack(tmp_path)
    packed.path.unlink()
    assert packed.notices == []


# ---- requirements files that include others ------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_included_requirements_are_part_of_the_venv_key(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "requirements.txt": "-r requirements/prod.txt\n",
            "requirements/prod.txt": "-r base.txt\ngunicorn\n",
            "requirements/base.txt": "flask==3.0.0\n",
        },
    )
    first = environment_spec(tmp_path, python_version="3.11")
    assert first.source == tmp_path / "requirements.txt"
    (tmp_path / "requirements/base.txt").write_text("flask==3.0.3\n")
    second = environment_spec(tmp_path, python_version="3.11")
    assert first.key != second.key  # a change in an included file means a new venv


@pytest.mark.parametrize("line", ["-r ../outside.txt", "--requirement=missing.txt", "-c/etc/x"])
def test_include_outside_the_app_or_missing_is_a_clear_error(tmp_path: Path, line: str) -> None:
    _write(tmp_path, {"requirements.txt": f"{line}\n"})
    with pytest.raises(InstallError, match="names a file that is not in the app folder"):
        environment_spec(tmp_path, python_version="3.11")


def _wheel(folder: Path, name: str, version: str, code: str) -> Path:
    """A minimal pure-Python wheel, written by hand so the test needs no build backend."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": code,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def test_real_install_of_nested_requirements_offline(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "tpgreeting", "1.0", "WORD = 'hi'\n")
    store = ArtifactStore()
    sha = store.add(
        {
            "Procfile": "web: python app.py\n",
            "app.py": "import tpgreeting\n",
            "requirements.txt": "-r requirements/base.txt\n",
            "requirements/base.txt": f"--no-index\n--find-links {wheels}\ntpgreeting==1.0\n",
        }
    )
    installer = Installer(tmp_path / "state", store.download)
    release = asyncio.run(installer.install(app="shop", version=1, sha256=sha))
    done = subprocess.run(
        [str(release.venv / "bin" / "python"), "-c", "import tpgreeting; print(tpgreeting.WORD)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == "hi"


def test_pack_names_poetry_dependencies_it_will_not_install(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: gunicorn app:app\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.poetry]\nname = "shop"\n[tool.poetry.dependencies]\npython = "^3.11"\nflask = "^3"\n'
    )
    packed = pack(tmp_path)
    packed.path.unlink()
    assert len(packed.notices) == 1
    assert "[tool.poetry.dependencies] is not read" in packed.notices[0]
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "shop"\ndependencies = ["flask"]\n')
    packed = pack(tmp_path)
    packed.path.unlink()
    assert packed.notices == []


def test_requirements_installing_the_apps_own_code_get_a_venv_per_artifact(
    tmp_path: Path,
) -> None:
    """`-e .` puts the release's own code in the venv: reusing it would run stale code."""
    _write(tmp_path, {"requirements.txt": "flask\n-e .\n", ".paas-artifact": "a" * 64 + "\n"})
    first = environment_spec(tmp_path, python_version="3.11")
    (tmp_path / ".paas-artifact").write_text("b" * 64 + "\n")
    assert environment_spec(tmp_path, python_version="3.11").key != first.key
    _write(tmp_path, {"requirements.txt": "flask\n# -e . is commented out\n"})
    plain = environment_spec(tmp_path, python_version="3.11")
    (tmp_path / ".paas-artifact").write_text("c" * 64 + "\n")
    assert environment_spec(tmp_path, python_version="3.11").key == plain.key


def test_procfile_from_a_windows_editor_parses() -> None:
    assert parse_procfile("\ufeffweb: gunicorn app:app\r\nrelease: x\r\n") == {
        "web": "gunicorn app:app",
        "release": "x",
    }


def test_instance_env_has_what_third_party_servers_expect(tmp_path: Path) -> None:
    env = instance_env(
        {"PORT": "1", "PATH": "/evil", "SECRET_KEY": "s"},
        port=8123,
        venv=tmp_path / "venv",
        home=tmp_path / "home",
        system_path="/usr/bin:/bin",
    )
    assert env["PORT"] == "8123"  # gunicorn reads it, uvicorn is given --port $PORT
    assert env["PATH"] == f"{tmp_path / 'venv' / 'bin'}:/usr/bin:/bin"  # `gunicorn` resolves
    assert env["PYTHONUNBUFFERED"] == "1"  # print() reaches `paas logs` at once
    assert env["HOME"] == str(tmp_path / "home")
    assert env["SECRET_KEY"] == "s"
