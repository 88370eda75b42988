"""A provisioned Debian root "booted" without systemd: commands run chrooted in a network
namespace, with a clean environment, as systemd would start the units' ExecStart lines.

Every process started here is recorded by pid; `stop_all` ends them (SIGTERM, bounded wait,
SIGKILL) and then kills whatever still has this root as its root folder (nginx workers, app
processes): only this test starts processes there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.system.ami.netns import Link
from tests.system.ami.rootfs import PATH, processes_in
from tests.system.ami.units import Unit, load_unit

REPO = Path(__file__).resolve().parents[3]
UPLOAD = "/tmp/paas-upload"


class ImageHost:
    def __init__(self, root: Path, link: Link, logs: Path) -> None:
        self.root = root
        self.link = link
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    # ---- files ------------------------------------------------------------------------------

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def upload(self, wheels: Path) -> None:
        """What the Packer template uploads, where it uploads it."""
        target = self.path(UPLOAD)
        shutil.copytree(REPO / "ami" / "files", target / "files")
        shutil.copytree(wheels, target / "wheels")
        shutil.copy(REPO / "ami" / "README.md", target / "README.md")
        shutil.copy(REPO / "ami" / "provision.sh", target / "provision.sh")

    def unit(self, name: str, *, instance: str | None = None) -> Unit:
        return load_unit(self.path(f"/etc/systemd/system/{name}"), instance=instance)

    def ids(self, user: str) -> tuple[int, int]:
        """uid and gid of a user of the image (its own /etc/passwd, not this machine's)."""
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise AssertionError(f"the image has no user {user!r}")

    def gid(self, group: str) -> int:
        for line in self.path("/etc/group").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == group:
                return int(fields[2])
        raise AssertionError(f"the image has no group {group!r}")

    # ---- processes ----------------------------------------------------------------------------

    def argv(self, argv: list[str], env: dict[str, str], *, user: str | None = None) -> list[str]:
        chroot = ["chroot"]
        if user is not None:
            uid, gid = self.ids(user)
            chroot += [f"--userspec={uid}:{gid}", f"--groups={gid}"]
        environment = [f"{k}={v}" for k, v in {"PATH": PATH, "LANG": "C.UTF-8", **env}.items()]
        return [*self.link.exec_argv(), *chroot, str(self.root), "/usr/bin/env", "-i",
                *environment, *argv]  # fmt: skip

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(argv, {"HOME": "/root", **(env or {})}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode} in the image:\n"
                + (done.stdout + done.stderr)[-4000:]
            )
        return done

    def start_unit(self, unit: Unit) -> subprocess.Popen[bytes]:
        """Start the unit's ExecStart as systemd would: its Environment=, its User=."""
        log = self.logs / f"{unit.name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.argv(unit.exec_start, unit.environment, user=unit.user),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def log_of(self, unit: Unit) -> str:
        path = self.logs / f"{unit.name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"

    def stop(self, proc: subprocess.Popen[bytes], *, timeout: float = 45.0) -> int | None:
        """SIGTERM (systemd's stop with KillMode=mixed), then SIGKILL after `timeout`."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc, timeout=20)
        deadline = time.monotonic() + 10
        while (left := processes_in(self.root)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
