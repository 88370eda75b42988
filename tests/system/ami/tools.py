"""What the image tests need from the machine: root and a few Debian tools.

On a developer's machine a missing tool skips the test with the package to install; in CI
(CI=true) it fails, since `make system-packages` installs them there.
"""

from __future__ import annotations

import os
import shutil

import pytest

PACKAGES = {"packer": "packer", "debootstrap": "debootstrap", "ip": "iproute2"}


def require(*tools: str, root: bool = False) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    reasons = []
    if missing:
        packages = " ".join(sorted({PACKAGES.get(tool, tool) for tool in missing}))
        reasons.append(f"missing {', '.join(missing)} (apt-get install {packages})")
    if root and os.geteuid() != 0:
        reasons.append("needs root")
    if not reasons:
        return
    if os.environ.get("CI"):
        pytest.fail("; ".join(reasons) + " - `make system-packages` should have installed it")
    pytest.skip("; ".join(reasons))
