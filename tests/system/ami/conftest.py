"""Fixtures the image tests share: the wheels the image installs, built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.system.ami import rootfs
from tests.system.ami.image_host import REPO


@pytest.fixture(scope="session")
def image_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ami/build-wheels.sh output for this checkout (the project's wheel and its deps)."""
    wheels = tmp_path_factory.mktemp("image-wheels")
    rootfs.run(
        ["bash", str(REPO / "ami" / "build-wheels.sh"), str(wheels)],
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    return wheels
