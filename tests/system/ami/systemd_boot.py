"""Boot a provisioned Debian root under real systemd: PID 1 of its own pid, mount, cgroup, UTS
and IPC namespaces, inside a network namespace (tests/system/ami/netns.py), chrooted into the root.

The mount layout (built by a small shell script in the new mount namespace, so nothing
leaks to this machine): the root bind-mounted onto itself (systemd's per-unit mount
namespaces need "/" to be a mount point), a fresh /proc, a tmpfs /dev with the usual
device nodes bound from this machine and its own devpts, a read-only sysfs, a tmpfs /run,
and a private cgroup2 tree: a cgroup of this machine's cgroup2 hierarchy that becomes the
root of a new cgroup namespace, mounted at /sys/fs/cgroup (systemd runs in unified mode; on
a host with v1 controllers the v2 tree has none of them, which systemd accepts). systemd
logs to its journal, and the gettys are masked.

Everything runs from this machine through `nsenter` into PID 1's namespaces; `kill()` ends
the whole namespace by killing its PID 1 (by pid), and the host cgroup is removed after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.system.ami.netns import Link
from tests.system.ami.rootfs import PATH

BOOT_SCRIPT = r"""
set -eu
R=$1
mount --bind "$R" "$R"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t tmpfs -o mode=0755,nosuid,size=16m tmpfs "$R/dev"
for node in null zero full random urandom tty; do
    touch "$R/dev/$node"
    mount --bind "/dev/$node" "$R/dev/$node"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
exec chroot "$R" /usr/bin/env -i container=paas-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /usr/lib/systemd/systemd --system --log-target=journal --show-status=false
"""


def cgroup2_root() -> Path:
    """Where this machine mounts its cgroup2 hierarchy (/sys/fs/cgroup or .../unified)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return Path(fields[4])
    raise AssertionError("this machine has no cgroup2 hierarchy mounted")


def mask_for_container(root: Path) -> None:
    """No gettys (no terminals here); the units of the image are left as they are."""
    system = root / "etc" / "systemd" / "system"
    for unit in ("getty.target", "console-getty.service"):
        link = system / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


class BootedHost:
    def __init__(self, root: Path, link: Link, work: Path, tag: str) -> None:
        self.root = root
        self.link = link
        self.work = work
        self.cgroup = cgroup2_root() / f"paas-boot-{tag}-{os.getpid()}"
        self.script = work / "boot.sh"
        self.script.write_text(BOOT_SCRIPT)
        self.boots = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid1: int | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def boot(self, *, timeout: float = 60) -> float:
        """Start PID 1 and wait until the boot is finished; returns how long it took."""
        assert self._proc is None or self._proc.poll() is not None, "already booted"
        self.boots += 1
        self.cgroup.mkdir(exist_ok=True)
        procs = self.cgroup / "cgroup.procs"
        started = time.monotonic()
        with (self.work / f"pid1-{self.boots}.log").open("wb") as out:
            self._proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.link.netns}", "--",
                 "unshare", "--fork", "--pid", "--mount", "--cgroup", "--uts", "--ipc",
                 "--propagation", "private", "--", "/bin/sh", str(self.script), str(self.root)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: procs.write_text("0"),  # this child only
            )  # fmt: skip
        self._pid1 = None
        self.until(lambda: self.pid1 is not None, what="systemd to start", timeout=10)
        self.until(
            lambda: self.state() in ("running", "degraded"), what="the boot to finish",
            timeout=timeout,
        )  # fmt: skip
        return time.monotonic() - started

    @property
    def pid1(self) -> int | None:
        """This machine's pid of the namespace's PID 1 (the child of `unshare`)."""
        if self._pid1 is not None:
            return self._pid1
        if self._proc is None or self._proc.poll() is not None:
            return None
        try:
            text = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text()
            pid = int(text.split()[0])
            if "systemd" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return None
        except (OSError, IndexError, ValueError):
            return None
        self._pid1 = pid
        return pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_down(self, *, timeout: float = 60) -> None:
        """PID 1 ended (poweroff/reboot inside, or killed)."""
        assert self._proc is not None
        self._proc.wait(timeout=timeout)
        self._pid1 = None
        self._remove_cgroup()

    def kill(self) -> None:
        """End the namespace: SIGKILL to its PID 1 takes every process in it along."""
        if self._proc is None:
            return
        pid = self.pid1
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, signal.SIGKILL)  # unshare, by its pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=20)
        self._pid1 = None
        self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        """The namespace's cgroups, deepest first, once the processes in them are gone."""
        deadline = time.monotonic() + 10
        while self.cgroup.exists():
            for folder, _, _ in os.walk(self.cgroup, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            if time.monotonic() > deadline:
                raise AssertionError(f"could not remove {self.cgroup}")
            time.sleep(0.05)

    # ---- inside -----------------------------------------------------------------------------

    def argv(self, argv: list[str]) -> list[str]:
        """Run in PID 1's namespaces and root, with a clean environment."""
        assert self.pid1 is not None, "not booted"
        return ["nsenter", "-t", str(self.pid1), "-m", "-p", "-n", "-u", "-i", "-C", "-r", "-w",
                "/usr/bin/env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0", *argv]  # fmt: skip

    def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode} in the booted host:\n"
                + (done.stdout + done.stderr)[-4000:]
            )
        return done

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run(["systemctl", "--no-pager", *args], check=check).stdout.strip()

    def state(self) -> str:
        if self.pid1 is None:
            return "down"
        return self.run(["systemctl", "is-system-running"], check=False).stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-P", prop, unit)

    def main_pid(self, unit: str) -> int:
        """The unit's main pid, as the namespace numbers it (0 when not running)."""
        return int(self.show(unit, "MainPID"))

    def journal(self, unit: str | None = None, *, lines: int = 60) -> str:
        argv = ["journalctl", "--no-pager", "-b", "-n", str(lines), "-o", "short-monotonic"]
        if unit is not None:
            argv += ["-u", unit]
        return self.run(argv, check=False).stdout

    def proc_status(self, pid: int) -> dict[str, str]:
        text = self.run(["cat", f"/proc/{pid}/status"]).stdout
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)

    def until(
        self,
        check: Callable[[], bool],
        *,
        what: str,
        timeout: float = 60,
        unit: str | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self._proc is not None and self._proc.poll() is not None and what != "down":
                log = (self.work / f"pid1-{self.boots}.log").read_text(errors="replace")
                raise AssertionError(f"PID 1 ended waiting for {what}:\n{log[-3000:]}")
            if time.monotonic() > deadline:
                detail = self.journal(unit) if self.pid1 is not None else ""
                raise AssertionError(f"timed out waiting for {what}\n{detail}")
            time.sleep(0.1)
