"""Helpers for tests of the registry: a real app on a temporary SQLite, tokens and artifacts.

Lives in tests/support (not in a conftest) so the agent and CLI tests can start a registry too.
A fresh SQLite registry starts from a copy of one database migrated once per test process
(`_migrated_template`): the same file a first start makes, without replaying every migration
in every test (the migrations have their own tests, tests/integration/test_migrations.py).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from controller.api.app import create_app
from controller.settings import RegistrySettings
from controller.store import secretbox
from controller.store.db import Database
from controller.store.tokens import issue_token

DEFAULT_FILES = {"Procfile": "web: python app.py\n", "paas.toml": "min_healthy_s = 0\n"}


@dataclass
class TestRegistry:
    __test__ = False  # not a pytest test class

    client: TestClient
    settings: RegistrySettings
    admin_token: str
    join_token: str

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    @property
    def admin(self) -> dict[str, str]:
        return self.headers(self.admin_token)

    def join(
        self, name: str, *, role: str = "machine", address: str = "127.0.0.1", port: int = 8000
    ) -> str:
        response = self.client.post(
            "/v1/hosts/join",
            json={"name": name, "role": role, "address": address, "proxy_port": port},
            headers=self.headers(self.join_token),
        )
        assert response.status_code == 200, response.text
        return response.json()["token"]

    def upload(self, data: bytes) -> str:
        sha = sha256_of(data)
        response = self.client.put(f"/v1/artifacts/{sha}", content=data, headers=self.admin)
        assert response.status_code == 200, response.text
        return sha

    def create_app(self, name: str, **body: Any) -> dict[str, Any]:
        response = self.client.post("/v1/apps", json={"name": name, **body}, headers=self.admin)
        assert response.status_code == 201, response.text
        return response.json()

    def deploy(self, app: str, files: dict[str, str] | None = None) -> dict[str, Any]:
        """Release `files` (default: a web Procfile whose paas.toml sets min_healthy_s = 0,
        so a release switches in as soon as its reports say healthy; the health window has
        its own tests, tests/unit/test_release_health.py)."""
        sha = self.upload(make_artifact(files or DEFAULT_FILES))
        response = self.client.post(
            f"/v1/apps/{app}/releases", json={"artifact_sha256": sha}, headers=self.admin
        )
        assert response.status_code == 201, response.text
        return response.json()

    def desired(self, host: str, token: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/hosts/{host}/desired", headers=self.headers(token))
        assert response.status_code == 200, response.text
        return response.json()

    def report(self, host: str, token: str, **body: Any) -> None:
        response = self.client.post(
            f"/v1/hosts/{host}/report", json=body, headers=self.headers(token)
        )
        assert response.status_code == 204, response.text

    def release(self, app: str, version: int) -> dict[str, Any]:
        response = self.client.get(f"/v1/apps/{app}/releases/{version}", headers=self.admin)
        assert response.status_code == 200, response.text
        return response.json()


@contextmanager
def test_registry(state_dir: Path, **overrides: Any) -> Iterator[TestRegistry]:
    """A registry app on `state_dir` with fresh admin and join tokens, lifespan running."""
    settings = RegistrySettings(state_dir=state_dir, **overrides)
    _start_from_template(settings)
    app = create_app(settings)
    db = app.state.ctx.db
    with db.write() as session:
        admin = issue_token(session, "admin")
        join = issue_token(session, "join")
    with TestClient(app) as client:
        yield TestRegistry(client=client, settings=settings, admin_token=admin, join_token=join)


test_registry.__test__ = False  # type: ignore[attr-defined]


@functools.cache
def _migrated_template() -> Path:
    """An empty registry.db at the head revision, made the way a first start makes it."""
    folder = Path(tempfile.mkdtemp(prefix="paas-registry-template-"))
    settings = RegistrySettings(state_dir=folder)
    db = Database(settings.db_url)
    secretbox.attach(db.engine, settings.keyring())
    try:
        db.prepare(migrate=True)
    finally:
        db.dispose()  # the last connection checkpoints the WAL into the file
    return folder / "registry.db"


def _start_from_template(settings: RegistrySettings) -> None:
    """A new embedded registry's database is the migrated template (mode 0600, as created);
    an existing database, a PostgreSQL URL or no migration at start is left to the registry."""
    target = settings.state_dir / "registry.db"
    if settings.database_url is not None or not settings.migrates_on_start:
        return
    if any(target.with_name(target.name + side).exists() for side in ("", "-wal", "-journal")):
        return
    template = _migrated_template()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.copyfile(template, partial)
    os.chmod(partial, 0o600)
    os.rename(partial, target)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_artifact(files: dict[str, str]) -> bytes:
    """A `.tar.gz` holding `files` (relative path -> text), as `paas deploy` would pack it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
