"""The registry as the agents see it, in-process, for tests of one agent at a time.

Just enough of docs/api.md for a machine agent (join, the blocking desired-state watch,
reports, artifact downloads) and for a frontend agent (join, the blocking routing watch,
reports). Plug it in with `transport=registry.transport` (an httpx.MockTransport on `handle`);
`down = True` makes every call fail as if the registry were unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from common.wire import DesiredInstance, DesiredState, HostReport, InstanceReport, RoutingTable

JOIN_TOKEN = "join-secret"
HOST_TOKEN = "host-secret"


def artifact_bytes(files: dict[str, str]) -> bytes:
    """A `.tar.gz` of `files` (relative path -> text), in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class ArtifactStore:
    """Artifacts by sha256, standing in for RegistryClient.download_artifact (installer tests)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.downloads: list[str] = []

    def add(self, files: dict[str, str]) -> str:
        data = artifact_bytes(files)
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    async def download(self, sha256: str, dest: Path) -> None:
        self.downloads.append(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.blobs[sha256])


class FakeRegistry:
    """One host's view of the registry: `host` joins with JOIN_TOKEN and gets HOST_TOKEN."""

    def __init__(self, host: str = "front-1") -> None:
        self.host = host
        self.down = False  # True: every request fails as if the registry were unreachable
        self.joins = 0
        self.reports: list[HostReport] = []
        # the machine agent's desired state
        self.index = 1
        self.instances: list[DesiredInstance] = []
        self.blobs: dict[str, bytes] = {}
        self._desired_changed = asyncio.Event()
        # the frontend agent's routing table
        self.tables: list[RoutingTable] = [RoutingTable(index=1, apps=[])]
        self.changed = asyncio.Event()  # set: a pending routing watch answers now
        self.transport = httpx.MockTransport(self.handle)

    # ---- what a test changes ---------------------------------------------------------

    def add_artifact(self, files: dict[str, str]) -> str:
        data = artifact_bytes(files)
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def set_desired(self, instances: list[DesiredInstance]) -> None:
        self.instances = instances
        self.index += 1
        self._desired_changed.set()
        self._desired_changed = asyncio.Event()

    def publish(self, new: RoutingTable) -> None:
        self.tables.append(new)
        self.changed.set()

    # ---- what a test reads ------------------------------------------------------------

    def last_report(self) -> dict[str, object]:
        """The last report as sent (every field), or {} before the first."""
        return self.reports[-1].model_dump(mode="json") if self.reports else {}

    def latest(self, iid: int) -> InstanceReport | None:
        if not self.reports:
            return None
        return next((r for r in self.reports[-1].instances if r.id == iid), None)

    async def until(
        self, what: str, predicate: Callable[[], bool], *, timeout_s: float = 30.0
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.02)
        last = self.reports[-1].model_dump_json() if self.reports else "no report"
        raise AssertionError(f"timed out waiting for {what}; last report: {last}")

    # ---- the API ----------------------------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/v1/hosts/join":
            assert request.headers["Authorization"] == f"Bearer {JOIN_TOKEN}"
            self.joins += 1
            return httpx.Response(200, json={"name": self.host, "token": HOST_TOKEN})
        if request.headers.get("Authorization") != f"Bearer {HOST_TOKEN}":
            return httpx.Response(401, json={"detail": "bad token"})
        if path == f"/v1/hosts/{self.host}/desired":
            return await self._desired(request)
        if path == "/v1/routing":
            return await self._routing(request)
        if path == f"/v1/hosts/{self.host}/report":
            self.reports.append(HostReport.model_validate_json(request.content))
            return httpx.Response(204)
        if path.startswith("/v1/artifacts/"):
            return httpx.Response(200, content=self.blobs[path.rsplit("/", 1)[1]])
        return httpx.Response(404, json={"detail": f"no route {path}"})

    async def _desired(self, request: httpx.Request) -> httpx.Response:
        seen = int(request.url.params.get("index", "0"))
        wait_s = int(request.url.params["wait"].removesuffix("ms")) / 1000
        if seen >= self.index:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._desired_changed.wait(), timeout=min(wait_s, 1.0))
        state = DesiredState(index=self.index, host=self.host, instances=self.instances)
        return httpx.Response(200, content=state.model_dump_json())

    async def _routing(self, request: httpx.Request) -> httpx.Response:
        index = int(request.url.params.get("index", "0"))
        wait_s = float(request.url.params["wait"].removesuffix("ms")) / 1000
        deadline = time.monotonic() + wait_s
        while self.tables[-1].index <= index and time.monotonic() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), deadline - time.monotonic())
        return httpx.Response(200, json=self.tables[-1].model_dump(mode="json"))
