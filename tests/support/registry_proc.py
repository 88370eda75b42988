"""A real `paas-registry serve` process for tests that attack its edge (issue 14).

Settings come through the `PAAS_*` environment (e.g. `header_timeout_s=2` becomes
`PAAS_HEADER_TIMEOUT_S=2`); the process is killed by pid afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cli.local import kill_tree
from common.registry_tls import no_tls
from tests.conftest import free_port

BIN = Path(sys.executable).parent


@dataclass
class RegistryProcess:
    url: str
    port: int
    admin_token: str
    join_token: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    state_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status_kb(self, field: str) -> int:
        """A field of /proc/<pid>/status in kB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise KeyError(field)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def join(self, name: str, client: httpx.Client) -> str:
        answer = client.post(
            f"{self.url}/v1/hosts/join",
            json={"name": name, "role": "machine", "address": "127.0.0.1", "proxy_port": 8000},
            headers={"Authorization": f"Bearer {self.join_token}"},
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["token"])

    def hosts(self, client: httpx.Client) -> dict[str, str]:
        answer = client.get(f"{self.url}/v1/hosts", headers=self.admin, timeout=5)
        assert answer.status_code == 200, answer.text
        return {h["name"]: h["state"] for h in answer.json()}


@contextlib.contextmanager
def registry_process(tmp: Path, **settings: Any) -> Iterator[RegistryProcess]:
    state = tmp / "registry"
    env = {**os.environ, **{f"PAAS_{k.upper()}": str(v) for k, v in settings.items()}}
    tokens_file = tmp / "tokens.json"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp / "registry.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "paas-registry"), "serve", "--state-dir", str(state),
             "--host", "127.0.0.1", "--port", str(port), "--init-tokens", str(tokens_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/health", timeout=1, verify=no_tls()).status_code == 200:
                    break
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.1)
        tokens = json.loads(tokens_file.read_text())  # written before it listens
        yield RegistryProcess(
            url=url,
            port=port,
            admin_token=tokens["admin_token"],
            join_token=tokens["join_token"],
            proc=proc,
            log_path=log_path,
            state_dir=state,
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # in case a test left it stopped
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait(timeout=10)
