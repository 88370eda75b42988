"""Issue 15 items 1 and 3 with a real single-worker app (tests/e2e/apps/single-worker: one
single-threaded HTTP server, as `gunicorn app:app` runs one sync worker).

1. One 8 s request in flight: every other request waits behind it and succeeds; none is
   answered 503 (HAProxy checks nginx itself, the agent calls a timed-out check of a live,
   listening process "busy", not dead).
3. Every release switch is lossless under a request loop: a depends_on change (the old
   instances' environment changes: they are replaced side by side, and no agent logs a
   traceback), a domain, a routing option, a process type.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cli.local import LocalCluster
from tests.e2e.helpers import REPO, logs, paas
from tests.e2e.request_loop import RequestLoop

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-shared-2")]

APP = "single-worker"
DEP = "sw-dep"
HOST = f"{APP}.localhost"
SOURCE = REPO / "tests" / "e2e" / "apps" / "single-worker"
# Makes a change; returns how an answer shows that the change is live.
Change = Callable[[LocalCluster, Path], Callable[[str], bool]]
MANIFEST = '[app]\nname = "{name}"\nhealth_path = "/health"\nmin_healthy_s = 0\n{extra}'


def deploy(cluster: LocalCluster, app: Path) -> None:
    done = paas(cluster, "deploy", str(app), "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr + logs(cluster)


def write_manifest(app: Path, name: str, extra: str = "") -> None:
    (app / "paas.toml").write_text(MANIFEST.format(name=name, extra=extra))


def get(cluster: LocalCluster, host: str, path: str, timeout: float = 30) -> httpx.Response:
    with httpx.Client(verify=False, timeout=timeout) as client:
        return client.get(
            f"https://127.0.0.1:{cluster.ports.https}{path}",
            headers={"Host": host},
            extensions={"sni_hostname": host},
        )


def log_marks(cluster: LocalCluster) -> dict[Path, int]:
    return {p: p.stat().st_size for p in cluster.logs_dir.glob("*.log")}


def tracebacks_since(cluster: LocalCluster, marks: dict[Path, int]) -> list[str]:
    """Tracebacks any component (the agents above all) logged since `marks`."""
    found = []
    for path in sorted(set(marks) | set(cluster.logs_dir.glob("*.log"))):
        with path.open("rb") as f:
            f.seek(marks.get(path, 0))
            text = f.read().decode(errors="replace")
        if "Traceback" in text:
            found.append(f"--- {path.name}\n{text[text.index('Traceback') :][:3000]}")
    return found


@pytest.fixture(scope="module")
def app(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("real-apps")
    folder, dep = root / APP, root / DEP
    shutil.copytree(SOURCE, folder)
    shutil.copytree(SOURCE, dep)
    write_manifest(dep, DEP)
    deploy(cluster, dep)
    deploy(cluster, folder)
    yield folder


def test_slow_request_makes_others_wait_never_503(cluster: LocalCluster, app: Path) -> None:
    slow: dict[str, object] = {}

    def slow_request() -> None:
        started = time.monotonic()
        response = get(cluster, HOST, "/slow")
        slow["status"], slow["took"] = response.status_code, time.monotonic() - started

    with RequestLoop(cluster, HOST, expect="single worker") as loop:
        thread = threading.Thread(target=slow_request)
        thread.start()
        # Once the slow request is in flight, the next one waits behind it (kernel backlog).
        deadline = time.monotonic() + 5
        waited = 0.0
        while time.monotonic() < deadline and waited < 3:
            started = time.monotonic()
            response = get(cluster, HOST, "/")
            waited = time.monotonic() - started
            assert response.status_code == 200, f"{response.status_code} {response.text}"
        thread.join(timeout=30)
        sent = loop.sent
        until = time.monotonic() + 10
        while loop.sent < sent + 20 and time.monotonic() < until:
            time.sleep(0.05)
    assert slow == {"status": 200, "took": slow.get("took")}, slow
    assert float(slow["took"]) >= 7.5, slow  # type: ignore[arg-type]
    assert waited >= 3, "no request waited behind the slow one: it was not in flight"
    assert loop.failures == [], loop.summary() + logs(cluster)
    assert loop.sent >= sent + 20, loop.summary()


def _live(text: str) -> bool:
    return "single worker" in text


def _depends_on(cluster: LocalCluster, app: Path) -> Callable[[str], bool]:
    write_manifest(app, APP, f'depends_on = ["{DEP}"]\n')
    deploy(cluster, app)
    return lambda text: "SW_DEP_URL" in text


def _no_depends_on(cluster: LocalCluster, app: Path) -> Callable[[str], bool]:
    write_manifest(app, APP, "depends_on = []\n")  # left out: the app keeps its list
    deploy(cluster, app)
    return lambda text: _live(text) and "SW_DEP_URL" not in text


def _domain(cluster: LocalCluster, app: Path) -> Callable[[str], bool]:
    done = paas(cluster, "domains:add", APP, "single-worker.example.test")
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 30
    while get(cluster, "single-worker.example.test", "/").status_code != 200:
        assert time.monotonic() < deadline, logs(cluster)
        time.sleep(0.1)
    return _live


def _routing(cluster: LocalCluster, app: Path) -> Callable[[str], bool]:
    done = paas(cluster, "routing:set", APP, "max_body_mb=5", "read_timeout_s=30")
    assert done.returncode == 0, done.stdout + done.stderr
    return _live


def _process_type(cluster: LocalCluster, app: Path) -> Callable[[str], bool]:
    (app / "Procfile").write_text(
        "web: python app.py\nworker: python -c 'import time; time.sleep(10**6)'\n"
    )
    deploy(cluster, app)
    return _live


@pytest.mark.parametrize(
    "change",
    [_depends_on, _no_depends_on, _domain, _routing, _process_type],
    ids=lambda f: f.__name__.strip("_"),
)
def test_release_switch_loses_nothing(cluster: LocalCluster, app: Path, change: Change) -> None:
    marks = log_marks(cluster)
    with RequestLoop(cluster, HOST, expect="single worker") as loop:
        shows = change(cluster, app)
        # The change is live: the answers say so (new environment, new release).
        deadline = time.monotonic() + 30
        while not shows(get(cluster, HOST, "/").text):
            assert time.monotonic() < deadline, loop.summary() + logs(cluster)
            time.sleep(0.1)
        sent = loop.sent
        until = time.monotonic() + 10
        while loop.sent < sent + 20 and time.monotonic() < until:
            time.sleep(0.05)
    assert loop.failures == [], loop.summary() + logs(cluster)
    assert tracebacks_since(cluster, marks) == []
