"""Local mode as another local user: nothing in the state folder or on a command line lets
`nobody` read a token, the database or a token hash (a host token's sha256 was the agent
API's credential, so reading registry.db meant root through `POST /v1/run`). And even with
the database in hand, the agent API now wants a fresh signature by the host's key.

The attack runs for real: a subprocess as uid 65534 tries to read every file local mode
writes and every cluster process's /proc/<pid>/cmdline, and must fail, while the cluster
keeps answering.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from cli.local import LocalCluster
from common.agent_auth import api_key, authorization
from tests.conftest import running_cluster, short_dir

# One xdist worker runs this module, in order; its fixtures start once (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-local-secrets")]

NOBODY = 65534

# Run as nobody with the system interpreter (stdlib only): for each path, what happened.
ATTACK = r"""
import json, os, sys
paths, pids = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {}
for path in paths:
    try:
        if os.path.isdir(path):
            out[path] = "listed: " + ",".join(os.listdir(path))
        else:
            with open(path, "rb") as fh:
                out[path] = "read: " + fh.read(200).hex()
    except OSError as exc:
        out[path] = type(exc).__name__
cmdlines = {}
for pid in pids:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdlines[pid] = fh.read().decode(errors="replace")
    except OSError as exc:
        cmdlines[pid] = type(exc).__name__
print(json.dumps({"files": out, "cmdlines": cmdlines}))
"""


def _as_nobody(paths: list[str], pids: list[int]) -> dict[str, dict[str, str]]:
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", ATTACK, json.dumps(paths), json.dumps(pids)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _cluster_pids(cluster: LocalCluster) -> list[int]:
    pids = []
    for pid in cluster.running().values():
        proc = psutil.Process(pid)
        pids += [proc.pid, *(c.pid for c in proc.children(recursive=True))]
    return pids


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as nobody")
def test_nobody_reads_no_secret_of_a_local_cluster() -> None:
    with short_dir("paas-sec-") as base:
        os.chmod(base, 0o755)  # the attacker may reach the state folder; only its modes protect
        with running_cluster(base / "s") as cluster:
            check_nothing_leaks(cluster)


def check_nothing_leaks(cluster: LocalCluster) -> None:
    state = cluster.state_dir
    tokens = cluster.tokens()
    join, admin = tokens["join_token"], tokens["admin_token"]
    db = state / "registry" / "registry.db"
    secrets = [
        db,
        db.with_name("registry.db-wal"),
        db.with_name("registry.db-shm"),
        state / "pids.json",
        state / "tokens.json",
        state / "registry" / "secret.key",  # the keyring: seals the agents' API keys too
        state / "machine-1" / "host-token",
        state / "frontend-1" / "host-token",
        *(cluster.log_path(name) for name in ("registry", "machine-1", "frontend-1")),
    ]
    # An agent keeps its host token just after the registry counts it joined and up, which
    # is all `up` waits for: under load the file can come a moment after `up` returned.
    deadline = time.monotonic() + 10
    while not all(path.exists() for path in secrets) and time.monotonic() < deadline:
        time.sleep(0.05)
    for path in secrets:  # they exist, and only root may read them
        assert path.exists(), path
        assert path.stat().st_mode & 0o077 == 0, f"{path} is {path.stat().st_mode & 0o777:o}"
    for folder in (state, state / "registry", state / "logs"):
        assert folder.stat().st_mode & 0o066 == 0, f"{folder} {folder.stat().st_mode & 0o777:o}"
    # The argv recorded in pids.json and every cluster process's command line carry no token.
    recorded = (state / "pids.json").read_text()
    assert join not in recorded and admin not in recorded
    pids = _cluster_pids(cluster)
    assert len(pids) >= 3

    seen = _as_nobody([str(p) for p in [state, state / "registry", *secrets]], pids)
    leaked = {path: what for path, what in seen["files"].items() if what != "PermissionError"}
    assert leaked == {}, leaked
    assert len(seen["cmdlines"]) == len(pids)
    host_hashes = []
    for name in ("machine-1", "frontend-1"):
        token = (state / name / "host-token").read_text().strip()
        host_hashes.append(hashlib.sha256(token.encode()).hexdigest())
        host_hashes.append(token)
    for pid, cmdline in seen["cmdlines"].items():
        for secret in (join, admin, *host_hashes):
            assert secret not in cmdline, (pid, cmdline)
    assert any("paas-agent" in c for c in seen["cmdlines"].values())  # we did read them

    check_agent_api_needs_a_fresh_signature(cluster)

    # The cluster still works.
    with cluster.client() as client:
        assert {h.name: h.state for h in client.list_hosts()} == {
            "machine-1": "up",
            "frontend-1": "up",
        }


def test_files_local_mode_writes_are_private(tmp_path: Path) -> None:
    """Without starting anything: pids.json is 0600, a new state folder 0700 and an old 0755
    one loses its read bits, whatever the umask."""
    state = tmp_path / "s"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / "pids.json").write_text("{}")
    os.chmod(state / "pids.json", 0o644)
    old = os.umask(0o022)
    try:
        cluster = LocalCluster(state)
        cluster._record({})
    finally:
        os.umask(old)
    assert state.stat().st_mode & 0o777 == 0o711  # pass-through kept, never read or list
    assert (state / "pids.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((state / "pids.json").read_text())["processes"] == {}
    argv = cluster._agent_argv("machine", "machine-1")
    assert "--join-token" not in argv
    fresh = LocalCluster(tmp_path / "new")
    fresh._record({})
    assert fresh.state_dir.stat().st_mode & 0o777 == 0o700


def check_agent_api_needs_a_fresh_signature(cluster: LocalCluster) -> None:
    """What registry.db gives (sha256 of a host token, the old bearer credential) no longer
    opens the agent API; a signature by the host's key does, once, for that body only."""
    state = cluster.state_dir
    db = sqlite3.connect(f"file:{state / 'registry' / 'registry.db'}?mode=ro", uri=True)
    hashes = [row[0] for row in db.execute("SELECT sha256 FROM tokens WHERE kind = 'host'")]
    sealed = [row[0] for row in db.execute("SELECT api_key_sealed FROM hosts")]
    db.close()
    assert len(hashes) == 2 and all(sealed)
    base = f"http://127.0.0.1:{cluster.ports.agent_api}"
    run = {"argv": ["id"]}
    with httpx.Client(base_url=base, trust_env=False, timeout=30) as http:
        for value in [*hashes, *sealed]:
            for header in (f"Bearer {value}", value):
                refused = http.post("/v1/run/hello", json=run, headers={"Authorization": header})
                assert refused.status_code == 401, refused.text
        token = (state / "machine-1" / "host-token").read_text().strip()
        key = api_key(token)
        body = json.dumps(run).encode()
        header = authorization(key, "GET", b"/v1/logs/hello?lines=5", b"", now=time.time())
        first = http.get("/v1/logs/hello?lines=5", headers={"Authorization": header})
        assert first.status_code == 200, first.text
        replay = http.get("/v1/logs/hello?lines=5", headers={"Authorization": header})
        assert replay.status_code == 401 and "already used" in replay.text
        signed = authorization(key, "POST", b"/v1/run/hello", body, now=time.time())
        tampered = json.dumps({"argv": ["sh", "-c", "id"]}).encode()
        altered = http.post("/v1/run/hello", content=tampered, headers={"Authorization": signed})
        assert altered.status_code == 401 and "wrong registry signature" in altered.text
        stale = authorization(key, "POST", b"/v1/run/hello", body, now=time.time() - 120)
        late = http.post("/v1/run/hello", content=body, headers={"Authorization": stale})
        assert late.status_code == 401 and "validity window" in late.text
