"""`packer validate` on ami/ with Debian 12's Packer: offline, no AWS credentials."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.system.ami.tools import require

REPO = Path(__file__).resolve().parents[3]
AMI = REPO / "ami"


def _packer(*args: str, cwd: Path = REPO, isolated: bool = False) -> subprocess.CompletedProcess:
    require("packer")
    # No checkpoint call home, no AWS credentials from this machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CHECKPOINT_DISABLE="1", PACKER_NO_COLOR="1")
    argv = ["packer", *args]
    if isolated and os.geteuid() == 0 and shutil.which("unshare"):
        argv = ["unshare", "--net", *argv]  # proves validate needs no network at all
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def test_packer_validate_passes_offline() -> None:
    done = _packer("validate", "ami/", isolated=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for role in ("machine", "frontend", "registry"):
        done = _packer("validate", "-var", f"role={role}", "-var", "arch=arm64", ".", cwd=AMI)
        assert done.returncode == 0, done.stdout + done.stderr


def test_packer_rejects_an_unknown_role() -> None:
    done = _packer("validate", "-var", "role=database", "ami/")
    assert done.returncode != 0
    assert "The role must be machine, frontend or registry." in done.stdout + done.stderr


def test_template_is_packer_formatted() -> None:
    done = _packer("fmt", "-check", "ami/")
    assert done.returncode == 0, f"run `packer fmt ami/`: {done.stdout}{done.stderr}"


@pytest.mark.parametrize("needle", ['"136693071363"', "most_recent = true", "amazon-ebs"])
def test_template_finds_debian_by_filter(needle: str) -> None:
    assert needle in (AMI / "paas.pkr.hcl").read_text()
