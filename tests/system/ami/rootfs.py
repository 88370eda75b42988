"""A Debian 12 root folder for the image tests: debootstrapped once, cached, copied per test.

The cache (a tar under /var/cache/paas-test) holds a minbase root plus systemd and the .deb
files of every package ami/provision.sh installs, with apt's lists: the provisioning run in
the test installs them for real (dpkg, maintainer scripts) without touching the network.
Its name carries a hash of everything that shapes it, so changing the package list rebuilds.

Mounts are the dangerous part: a bind-mounted /dev inside a folder that gets deleted takes
the host's /dev with it. `mounted()` unmounts in `finally` and `unpacked()` refuses to delete
a root that still has anything mounted below it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PROVISION = REPO / "ami" / "provision.sh"
CACHE_DIR = Path(os.environ.get("PAAS_TEST_CACHE", "/var/cache/paas-test"))
SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE = ("systemd",)  # systemctl and systemd-analyze, as on a real host
CACHE_FORMAT = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def provision_packages() -> list[str]:
    """APT_PACKAGES of ami/provision.sh: the cache holds their .deb files."""
    match = re.search(r'^APT_PACKAGES="([^"]+)"', PROVISION.read_text(), re.MULTILINE)
    assert match, "ami/provision.sh has no APT_PACKAGES line"
    return match.group(1).split()


def apt_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for block in sources.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", block, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.MULTILINE)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1).rstrip("/")
    listing = Path("/etc/apt/sources.list")
    if listing.is_file():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1].rstrip("/")
    return DEFAULT_MIRROR


def cache_key(mirror: str) -> str:
    parts = [CACHE_FORMAT, SUITE, VARIANT, mirror, ",".join(INCLUDE), *provision_packages()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def run(argv: Sequence[str], *, timeout: float, **kwargs: object) -> subprocess.CompletedProcess:
    """Run to completion, output captured; raise with the output's tail on failure."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-3000:]
        raise AssertionError(f"{argv[0]} exited {done.returncode}: {' '.join(argv)}\n{output}")
    return done


def cached_root() -> Path:
    """The cached root tar, built on first use (debootstrap + the provisioning .debs)."""
    mirror = apt_mirror()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / f"debootstrap-{SUITE}-{cache_key(mirror)}.tar"
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run waits for the same build
        if target.is_file():
            return target
        build = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_DIR))
        try:
            _build_root(build / "root", mirror)
            partial = target.with_suffix(".partial")
            run(
                ["tar", "--numeric-owner", "-C", str(build / "root"), "-cf", str(partial), "."],
                timeout=300,
            )
            os.replace(partial, target)
        finally:
            _assert_nothing_mounted(build)
            shutil.rmtree(build, ignore_errors=True)
        for old in CACHE_DIR.glob(f"debootstrap-{SUITE}-*.tar"):
            if old != target:
                old.unlink(missing_ok=True)  # only the current key is worth keeping
    return target


def _build_root(root: Path, mirror: str) -> None:
    run(
        [
            "debootstrap", f"--variant={VARIANT}", f"--include={','.join(INCLUDE)}",
            SUITE, str(root), mirror,
        ],
        timeout=900,
    )  # fmt: skip
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    env = {"PATH": PATH, "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    run(["chroot", str(root), "apt-get", "update", "-q"], timeout=300, env=env)
    run(
        ["chroot", str(root), "apt-get", "install", "-q", "-y", "--download-only",
         "--no-install-recommends", *provision_packages()],
        timeout=600,
        env=env,
    )  # fmt: skip
    (root / "etc" / "resolv.conf").unlink()


@contextlib.contextmanager
def unpacked(tar: Path, root: Path) -> Iterator[Path]:
    """A fresh copy of the cached root at `root`; deleted afterwards if nothing is mounted."""
    root.mkdir(parents=True)
    try:
        run(["tar", "--numeric-owner", "-C", str(root), "-xf", str(tar)], timeout=300)
        yield root
    finally:
        _assert_nothing_mounted(root)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[Path]:
    """/proc (new instance), /dev and /sys (read-only bind) inside `root`; all unmounted
    in finally, lazily if busy."""
    try:
        run(["mount", "-t", "proc", "proc", str(root / "proc")], timeout=30)
        run(["mount", "--bind", "/dev", str(root / "dev")], timeout=30)
        run(["mount", "--bind", "/sys", str(root / "sys")], timeout=30)
        run(["mount", "-o", "remount,bind,ro", str(root / "sys")], timeout=30)
        yield root
    finally:
        for point in reversed(mounts_below(root)):
            done = subprocess.run(["umount", point], capture_output=True, timeout=30)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
        _assert_nothing_mounted(root)


def mounts_below(root: Path) -> list[str]:
    """Mount points at or below `root`, in mount order (from this process's mountinfo)."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


def _assert_nothing_mounted(root: Path) -> None:
    left = mounts_below(root)
    if left:
        raise RuntimeError(f"refusing to delete {root}: still mounted: {left}")


def processes_in(root: Path) -> list[int]:
    """Pids of every process whose root folder is `root`: only this test starts those."""
    target = str(root.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "root") == target:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids
