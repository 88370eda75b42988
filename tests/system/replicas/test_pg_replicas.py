"""Two registry replicas (real uvicorn processes) on one real PostgreSQL.

- a blocking-query watcher (the agents' real RegistryClient) on replica A sees a change made
  through replica B within a second (LISTEN/NOTIFY);
- exactly one replica is the leader, and the other takes over when it dies;
- a whole cluster (machine + frontend agents, both given both URLs): kill -9 replica A, the app
  keeps answering, and a `paas deploy` with both URLs works through B; nothing committed is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from agent.link.client import RegistryClient as AgentClient
from cli.local import kill_tree
from common.registry_tls import no_tls
from tests.conftest import free_port_range, free_ports, short_dir
from tests.support.pg import PgServer
from tests.support.registry_app import make_artifact, sha256_of

# One xdist worker: the replicas share its PostgreSQL server (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("system-replicas")

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[3]


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}


@dataclass
class Replicas:
    root: Path
    db_url: str
    ports: list[int]
    service_ports: tuple[int, int]
    admin: str = ""
    join: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    @property
    def urls(self) -> str:
        return ",".join(self.url(i) for i in range(len(self.ports)))

    def run(self, *argv: str) -> str:
        done = subprocess.run(
            [str(BIN / "paas-registry"), *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.registry_env(),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def registry_env(self) -> dict[str, str]:
        """Replicas share one secret keyring (docs/operations.md, "Secrets at rest")."""
        return {**_child_env(), "PAAS_SECRET_KEY_FILE": str(self.root / "secret.key")}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env or _child_env(),
            cwd=self.root,
        )
        log.close()

    def start_registries(self, *, at_once: bool) -> None:
        """Every replica; `at_once`: all started before waiting for any (whichever leads),
        else one after the other, so the first one started is the leader."""
        for i in range(len(self.ports)):
            self.spawn_registry(i)
            if not at_once:
                self.wait_registry(i)
        for i in range(len(self.ports)):
            self.wait_registry(i)

    def spawn_registry(self, i: int) -> None:
        self.start(
            f"registry{i}",
            [
                str(BIN / "paas-registry"), "serve",
                "--database-url", self.db_url,
                "--state-dir", str(self.root / f"registry{i}"),
                "--port", str(self.ports[i]),
                "--service-port-min", str(self.service_ports[0]),
                "--service-port-max", str(self.service_ports[1]),
            ],
            env=self.registry_env(),
        )  # fmt: skip

    def wait_registry(self, i: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.procs[f"registry{i}"].poll() is None, self.logs()
            try:
                health = httpx.get(f"{self.url(i)}/v1/health", timeout=1, verify=no_tls())
                if health.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"registry {i} did not start\n{self.logs()}")

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        kill_tree(proc.pid)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                with_children = name.startswith(("machine", "frontend"))
                if with_children:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        kill_tree(proc.pid)
                else:
                    kill_tree(proc.pid)
            kill_tree(proc.pid)  # leftovers (apps, nginx, HAProxy) of a stopped agent

    def logs(self) -> str:
        parts = []
        for log in sorted(self.root.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-25:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin}"}


@pytest.fixture(scope="module")
def migrated(postgres: PgServer) -> str:
    """A database migrated by `paas-registry migrate` once, the template of each test's own."""
    template = f"rep_template_{os.getpid()}"
    with psycopg.connect(_dsn(postgres), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{template}"')
    done = subprocess.run(
        [str(BIN / "paas-registry"), "migrate", "--database-url", postgres.url(template)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_child_env(),
    )
    assert done.returncode == 0 and "applied" in done.stdout, done.stdout + done.stderr
    return template


def _dsn(postgres: PgServer) -> str:
    return f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres"


def _fresh_database(postgres: PgServer, template: str) -> str:
    """A new database, a copy of the migrated template (PostgreSQL copies it in one step)."""
    name = f"rep_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_dsn(postgres), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return postgres.url(name)


@contextlib.contextmanager
def _running_replicas(postgres: PgServer, template: str, *, at_once: bool) -> Iterator[Replicas]:
    with short_dir("paas-rep-") as root:
        group = Replicas(
            root=root,
            db_url=_fresh_database(postgres, template),
            ports=free_ports(2),
            service_ports=free_port_range(),
        )
        try:
            tokens = json.loads(
                group.run(
                    "init", "--json", "--database-url", group.db_url,
                    "--state-dir", str(root / "init"),
                )
            )  # fmt: skip
            group.admin, group.join = tokens["admin_token"], tokens["join_token"]
            group.start_registries(at_once=at_once)
            yield group
        finally:
            group.stop_all()


@pytest.fixture
def replicas(postgres: PgServer, migrated: str) -> Iterator[Replicas]:
    """Two replicas of the test's own, for the tests that kill one; the first one leads."""
    with _running_replicas(postgres, migrated, at_once=False) as group:
        yield group


@pytest.fixture(scope="module")
def shared_replicas(postgres: PgServer, migrated: str) -> Iterator[Replicas]:
    """Two replicas for the tests that only read and write through them (distinct apps)."""
    with _running_replicas(postgres, migrated, at_once=True) as group:
        yield group


def _leaders(group: Replicas) -> list[str]:
    return [n for n in ("registry0", "registry1") if "is now the leader" in _log(group, n)]


def _log(group: Replicas, name: str) -> str:
    return (group.root / f"{name}.log").read_text(errors="replace")


def test_watch_on_a_wakes_for_a_change_through_b(shared_replicas: Replicas) -> None:
    replicas = shared_replicas
    a, b = replicas.url(0), replicas.url(1)
    joined = httpx.post(
        f"{b}/v1/hosts/join",
        json={"name": "m1", "role": "machine", "address": "127.0.0.1", "proxy_port": 8000},
        headers=replicas.headers(replicas.join),
    )
    assert joined.status_code == 200, joined.text
    host_token = joined.json()["token"]

    async def scenario() -> tuple[float, int, int]:
        client = AgentClient(a, token=host_token)
        try:
            first = await client.desired("m1", index=0, wait_s=0)
            watch = asyncio.create_task(client.desired("m1", index=first.index, wait_s=20))
            await asyncio.sleep(0.5)  # the watch is parked on A
            assert not watch.done()
            async with httpx.AsyncClient(base_url=b, headers=replicas.headers()) as admin:
                created = await admin.post("/v1/apps", json={"name": "hello"})
                assert created.status_code == 201, created.text
                data = make_artifact({"Procfile": "web: python app.py\n"})
                sha = sha256_of(data)
                put = await admin.put(f"/v1/artifacts/{sha}", content=data)
                assert put.status_code == 200, put.text
                started = time.monotonic()
                deployed = await admin.post(
                    "/v1/apps/hello/releases", json={"artifact_sha256": sha}
                )
                assert deployed.status_code == 201, deployed.text
            answer = await asyncio.wait_for(watch, timeout=5)
            return time.monotonic() - started, first.index, answer.index
        finally:
            await client.aclose()

    elapsed, before, after = asyncio.run(scenario())
    assert after > before
    assert elapsed < 1.0, f"the watch on A woke {elapsed:.2f}s after the change through B"

    async def routing_changes(count: int) -> list[float]:
        """The frontends' routing watch on A, a domain added through B, `count` times."""
        joined = httpx.post(
            f"{b}/v1/hosts/join",
            json={"name": "f1", "role": "frontend", "address": "127.0.0.1", "proxy_port": 1},
            headers=replicas.headers(replicas.join),
        )
        assert joined.status_code == 200, joined.text
        client = AgentClient(a, token=joined.json()["token"])
        delays = []
        try:
            async with httpx.AsyncClient(base_url=b, headers=replicas.headers()) as admin:
                index = (await client.routing(index=0, wait_s=0)).index
                for i in range(count):
                    watch = asyncio.create_task(client.routing(index=index, wait_s=20))
                    await asyncio.sleep(0.2)
                    started = time.monotonic()
                    added = await admin.post(
                        "/v1/apps/hello/domains", json={"domain": f"d{i}.example.com"}
                    )
                    assert added.status_code == 201, added.text
                    table = await asyncio.wait_for(watch, timeout=5)
                    delays.append(time.monotonic() - started)
                    assert table.index > index
                    index = table.index
        finally:
            await client.aclose()
        return delays

    delays = sorted(asyncio.run(routing_changes(10)))
    assert delays[-1] < 1.0, delays
    print(
        f"cross-replica wake-up: deploy {elapsed * 1000:.0f} ms; routing x10 median"
        f" {delays[5] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms (change request included)"
    )
    # the artifact uploaded through B is readable through A (it lives in the database)
    got = httpx.get(
        f"{a}/v1/artifacts/{_release_sha(replicas, 'hello')}", headers=replicas.headers()
    )
    assert got.status_code == 200 and got.content.startswith(b"\x1f\x8b")


def _release_sha(group: Replicas, app: str) -> str:
    releases = httpx.get(f"{group.url(0)}/v1/apps/{app}/releases", headers=group.headers()).json()
    return releases[0]["artifact_sha256"]


def test_one_leader_and_takeover(replicas: Replicas) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _leaders(replicas):
        time.sleep(0.1)
    leaders = _leaders(replicas)
    assert len(leaders) == 1, replicas.logs()
    replicas.kill(leaders[0])
    other = "registry1" if leaders[0] == "registry0" else "registry0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "is now the leader" not in _log(replicas, other):
        time.sleep(0.1)
    assert "is now the leader" in _log(replicas, other), replicas.logs()


def test_concurrent_writes_through_both_replicas_lose_nothing(shared_replicas: Replicas) -> None:
    """Release versions are a read-modify-write: 2 x 10 deploys of one app in parallel through
    both replicas must give versions 1..20 exactly once (the revision row lock)."""
    replicas = shared_replicas
    data = make_artifact({"Procfile": "web: python app.py\n"})
    sha = sha256_of(data)
    with httpx.Client(headers=replicas.headers(), timeout=30) as http:
        assert http.post(f"{replicas.url(0)}/v1/apps", json={"name": "busy"}).status_code == 201
        assert http.put(f"{replicas.url(1)}/v1/artifacts/{sha}", content=data).status_code == 200

    async def deploy_many(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, headers=replicas.headers(), timeout=60) as c:
            answers = await asyncio.gather(
                *(
                    c.post("/v1/apps/busy/releases", json={"artifact_sha256": sha})
                    for _ in range(10)
                )
            )
        assert all(r.status_code == 201 for r in answers), [r.text for r in answers]
        return [r.json()["version"] for r in answers]

    async def both() -> list[int]:
        a, b = await asyncio.gather(deploy_many(replicas.url(0)), deploy_many(replicas.url(1)))
        return a + b

    versions = asyncio.run(both())
    assert sorted(versions) == list(range(1, 21))


@pytest.mark.e2e
def test_kill_replica_a_agents_and_cli_fail_over(replicas: Replicas, tmp_path: Path) -> None:
    """A real cluster on both URLs; SIGKILL replica A: the app keeps serving and routed, and a
    deploy through the CLI with both URLs works via B."""
    http_port, https_port, proxy_port = free_ports(3)
    for role, name in (("machine", "m1"), ("frontend", "f1")):
        argv = [
            str(BIN / "paas-agent"), "--role", role,
            "--registry-url", replicas.urls,
            "--join-token", replicas.join,
            "--name", name,
            "--address", "127.0.0.1",
            "--state-dir", str(replicas.root / name),
        ]  # fmt: skip
        if role == "machine":
            argv += ["--proxy-port", str(proxy_port)]
        else:
            argv += ["--http-port", str(http_port), "--https-port", str(https_port)]
        replicas.start(name, argv)
    _wait_hosts_up(replicas, {"m1", "f1"})

    env = {
        **_child_env(),
        "PAAS_REGISTRY_URL": replicas.urls,
        "PAAS_TOKEN": replicas.admin,
        "PAAS_CONFIG": str(tmp_path / "cli.json"),
    }
    app_dir = tmp_path / "hello"
    shutil.copytree(
        REPO / "examples" / "hello", app_dir, ignore=shutil.ignore_patterns("__pycache__")
    )

    def deploy() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "paas"), "deploy", str(app_dir), "--timeout", "180"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    first = deploy()
    assert first.returncode == 0, first.stdout + first.stderr + replicas.logs()
    assert "release 1" in _https(https_port, "hello.localhost")

    assert _leaders(replicas) == ["registry0"], replicas.logs()  # A runs the schedulers too
    replicas.kill("registry0")  # SIGKILL: no goodbye to PostgreSQL, the agents or the CLI
    for _ in range(10):  # the app keeps answering, routed, while A is gone
        assert "release 1" in _https(https_port, "hello.localhost")
        time.sleep(0.2)

    code = (app_dir / "app.py").read_text().replace('"Hello from', '"Howdy from')
    (app_dir / "app.py").write_text(code)
    second = deploy()
    assert second.returncode == 0, second.stdout + second.stderr + replicas.logs()
    body = _https(https_port, "hello.localhost")
    assert "Howdy from hello" in body and "release 2" in body

    with httpx.Client(headers=replicas.headers(), timeout=10) as http:
        releases = http.get(f"{replicas.url(1)}/v1/apps/hello/releases").json()
        hosts = {h["name"]: h["state"] for h in http.get(f"{replicas.url(1)}/v1/hosts").json()}
    assert [r["version"] for r in releases][:2] == [2, 1]
    assert [r["status"] for r in releases][:2] == ["active", "superseded"]
    assert hosts == {"m1": "up", "f1": "up"}
    assert "is now the leader" in _log(replicas, "registry1"), replicas.logs()
    for agent in ("m1", "f1"):  # both really were on A, and moved to B
        assert "trying the next replica" in _log(replicas, agent), replicas.logs()
    assert replicas.procs["m1"].poll() is None and replicas.procs["f1"].poll() is None


def _https(port: int, host: str) -> str:
    with httpx.Client(verify=False, timeout=10) as client:
        response = client.get(
            f"https://127.0.0.1:{port}/", headers={"Host": host}, extensions={"sni_hostname": host}
        )
    assert response.status_code == 200, response.text
    return response.text


def _wait_hosts_up(group: Replicas, names: set[str]) -> None:
    deadline = time.monotonic() + 60
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        for name in names:
            assert group.procs[name].poll() is None, group.logs()
        try:
            hosts = httpx.get(f"{group.url(1)}/v1/hosts", headers=group.headers(), timeout=5)
            states = {h["name"]: h["state"] for h in hosts.json()}
        except (httpx.HTTPError, ValueError):
            states = {}
        if all(states.get(n) == "up" for n in names):
            return
        time.sleep(0.3)
    raise AssertionError(f"hosts not up: {states}\n{group.logs()}")
