"""Fixtures the image tests share: the wheels the image installs, built once per test run."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.system.ami import rootfs
from tests.system.ami.image_host import REPO


@pytest.fixture(scope="session")
def image_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ami/build-wheels.sh output for this checkout (the project's wheel and its deps).

    Under xdist the image tests run in different workers at once: the first one builds into
    the run's shared temp folder (the parent of the workers' own) under a lock, the others
    wait for it and reuse the build instead of building the same wheels again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this run's, shared by its workers (a new one every run)
    wheels = root / "image-wheels"
    done = root / "image-wheels.done"
    with open(root / "image-wheels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(wheels, ignore_errors=True)
            wheels.mkdir()
            rootfs.run(
                ["bash", str(REPO / "ami" / "build-wheels.sh"), str(wheels)],
                timeout=600,
                env={**os.environ, "PYTHON": sys.executable},
            )
            done.touch()
    return wheels
