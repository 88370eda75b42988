"""`paas-registry serve --init-tokens FILE`: a new registry issues its admin and join tokens
itself (what `paas local up` and the tests start), once; a registry that has them leaves
the file alone."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx

from tests.support.registry_proc import registry_process


def test_first_start_writes_working_tokens_once(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens.json"  # where registry_process points --init-tokens
    with registry_process(tmp_path) as registry, httpx.Client(timeout=10) as client:
        assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
        first = json.loads(tokens_file.read_text())
        assert set(first) == {"admin_token", "join_token"}  # plain HTTP: no fingerprint
        assert client.get(f"{registry.url}/v1/apps", headers=registry.admin).status_code == 200
        registry.join("m1", client)  # the join token works
        written = tokens_file.stat().st_mtime_ns
    assert "issued the admin and join tokens" in registry.log()

    with registry_process(tmp_path) as again, httpx.Client(timeout=10) as client:
        assert tokens_file.stat().st_mtime_ns == written  # not rewritten: no new tokens
        assert again.admin_token == first["admin_token"]
        assert client.get(f"{again.url}/v1/apps", headers=again.admin).status_code == 200
    assert "issued the admin and join tokens" not in again.log()  # the log starts afresh
