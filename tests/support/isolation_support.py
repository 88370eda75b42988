"""Shared pieces of the app isolation tests (issue 12): an isolated state folder, artifacts,
tiny wheels, and a uid range of our own so tests running side by side never share uids."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import os
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.machine.build.installer import Installer
from agent.machine.run.uids import AppUsers, secure_state_dir
from tests.conftest import short_dir
from tests.support.ports import worker_slice

# Test uids lie above the agents' default 70000-79999, so no test meets the app uids of a
# local cluster (the e2e tests' or a user's demo); each xdist worker owns a slice of them.
TEST_UIDS = (100000, 199999)
_blocks = itertools.count()


def uid_range(size: int = 100) -> tuple[int, int]:
    """`size` uids no other test uses: the next block of this worker's slice. Uids are one
    space for the whole machine: an agent's janitor kills every process of a departed app's
    uid, so two tests sharing a uid could kill each other's processes."""
    low, high = worker_slice(*TEST_UIDS)
    start = low + next(_blocks) % ((high - low) // size) * size
    return start, start + size - 1


def artifact(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode() if isinstance(text, str) else text
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Store:
    """Stands in for RegistryClient.download_artifact."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def add(self, files: dict[str, str | bytes]) -> str:
        data = artifact(files)
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    async def download(self, sha256: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.blobs[sha256])


@contextmanager
def isolated_state() -> Iterator[tuple[Path, AppUsers, Installer, Store]]:
    """A machine state folder as the agent sets it up (root: apps isolated), with the agent's
    secrets in it, and an installer that builds as each app's uid."""
    with short_dir("paas-iso-") as folder:
        state = folder / "state"
        secure_state_dir(state, isolated=True)
        for secret in ("host-token", "desired.json"):
            fd = os.open(state / secret, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, b"TOP-SECRET-" + secret.encode())
            os.close(fd)
        users = AppUsers(state, uid_range=uid_range(), isolated=True)
        store = Store()
        yield state, users, Installer(state, store.download, users=users), store


def wheel(name: str, version: str, module_text: str) -> tuple[str, bytes]:
    """A minimal pure-python wheel: (file name, bytes)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_text.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()
