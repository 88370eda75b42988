"""The host image under real systemd (tests/system/ami/systemd_boot.py): the provisioned Debian root
boots with systemd as PID 1 in its own namespaces, the units start as the image starts them
(paas-firstboot from user data over IMDSv2, then the agents; the registry and a frontend
agent from settings written by hand on the same host), and their sandboxing holds.

Then the faults the chroot test cannot show: the machine agent is killed with SIGKILL,
systemd restarts it, and the new agent adopts nginx and a gunicorn app that must still work
(replace a killed worker, reload nginx on a redeploy: both lived in a /tmp that a PrivateTmp
unit loses on restart); the same for the frontend agent and HAProxy; the registry stops at
once while agents hold long-poll watches; and after a reboot everything serves again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import short_dir
from tests.system.ami import rootfs
from tests.system.ami.fake_imds import endpoint, fake_imds
from tests.system.ami.image_host import REPO, UPLOAD, ImageHost
from tests.system.ami.netns import Link, veth_namespace
from tests.system.ami.systemd_boot import BootedHost, mask_for_container
from tests.system.ami.tools import require

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent
DOMAIN = "ami.test"
INSTANCE_ID = "i-0fedcba9876543210"
APP = "gapp"
MACHINE = "paas-agent@machine.service"
FRONTEND = "paas-agent@frontend.service"
REGISTRY = "paas-registry.service"
FIRSTBOOT = "paas-firstboot.service"
# Two hosts in one: each needs its own address, since the machine's nginx answers only
# connections from a frontend's address (HAProxy -> 127.0.0.2 comes from 127.0.0.1).
MACHINE_ADDRESS = "127.0.0.2"
FRONTEND_ADDRESS = "127.0.0.1"
TEST_WHEELS = "/opt/paas-test-wheels"  # gunicorn for the app, offline: no index in the netns
# `systemd-analyze security` exposure (0 best, 10 worst); docs/security.md has the numbers.
EXPOSURE_AT_MOST = {REGISTRY: 1.5, MACHINE: 3.3, FRONTEND: 3.1, FIRSTBOOT: 2.7}


def test_image_under_systemd_survives_agent_crashes_and_reboots(
    tmp_path: Path, image_wheels: Path
) -> None:
    require("debootstrap", "ip", "chroot", "mount", "tar", "unshare", "nsenter", root=True)
    tar = rootfs.cached_root()
    app_wheels = _download_gunicorn(tmp_path / "app-wheels")
    app_dir = _gunicorn_app(tmp_path / APP)  # deploy names the app after its folder
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        short_dir("paas-sd-") as work,
        rootfs.unpacked(tar, work / "root") as root,
        veth_namespace("s") as link,
    ):
        image = ImageHost(root, link, logs)
        booted = BootedHost(root, link, work, "s")
        try:
            with rootfs.mounted(root):
                image.upload(image_wheels)
                project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                env = {"PAAS_VERSION": project["version"], "PAAS_UPLOAD": UPLOAD}
                image.run(["bash", f"{UPLOAD}/provision.sh"], env=env, timeout=900)
                tokens = _registry_by_hand(image)
            # Not loopback: the registry serves HTTPS with the certificate `init` made; the
            # agents and the CLI pin its fingerprint.
            pin = tokens.get("registry_fingerprint", "")
            registry_url = f"{'https' if pin else 'http'}://{link.ns_addr}:8070"
            pinned = f'registry_fingerprint = "{pin}"\n' if pin else ""
            _frontend_by_hand(image, registry_url, tokens["join_token"], pinned)
            shutil.copytree(app_wheels, image.path(TEST_WHEELS))
            mask_for_container(root)
            user_data = (
                f'registry_url = "{registry_url}"\njoin_token = "{tokens["join_token"]}"\n{pinned}'
            )
            with fake_imds(
                link.host_addr, user_data=user_data, instance_id=INSTANCE_ID,
                local_ipv4=MACHINE_ADDRESS,
            ) as imds:  # fmt: skip
                _firstboot_reads(image, endpoint(imds))
                cli = _Cli(registry_url, tokens["admin_token"], pin, work)
                _scenario(booted, image, link, cli, app_dir)
        finally:
            booted.kill()
            image.stop_all()  # nothing should be left; kills by pid what has this root


def _scenario(booted: BootedHost, image: ImageHost, link: Link, cli: _Cli, app_dir: Path) -> None:
    timings: dict[str, float] = {}
    timings["boot"] = booted.boot()
    _wait_units_up(booted)
    assert "machine settings written" in booted.journal(FIRSTBOOT)
    _wait_hosts_up(cli, booted)
    exposure = _assert_sandboxed(booted, image)

    started = time.monotonic()
    cli.run("apps:create", APP)
    cli.deploy(app_dir)
    timings["first deploy"] = time.monotonic() - started
    _assert_serves(booted, link)

    # The machine agent dies hard; systemd restarts it; it adopts nginx and the app.
    nginx, gunicorn = _nginx_master(image), _gunicorn_master(image)
    _crash_and_restart(booted, MACHINE)
    _wait_hosts_up(cli, booted)
    assert (_nginx_master(image), _gunicorn_master(image)) == (nginx, gunicorn), "not adopted"
    _assert_tmp_alive(booted, nginx, gunicorn)
    _assert_serves(booted, link)
    # The adopted gunicorn replaces a dead worker (its worker files are in its own tmp).
    _kill_a_worker_and_see_it_replaced(image, booted, link, gunicorn)
    # A redeploy: the adopted nginx reloads (its temp folders survived the agent restart).
    cli.deploy(app_dir)
    assert _nginx_master(image) == nginx
    _assert_serves(booted, link)

    # The frontend agent dies hard too; HAProxy is adopted and keeps serving over HTTPS.
    haproxy = _haproxy_master(image)
    _crash_and_restart(booted, FRONTEND)
    _wait_hosts_up(cli, booted)
    assert _haproxy_master(image) == haproxy, "HAProxy was not adopted"
    _assert_tmp_alive(booted, haproxy)
    cli.deploy(app_dir)  # both proxies take the new release
    _assert_serves(booted, link)

    # The registry stops at once while both agents hold long-poll watches.
    started = time.monotonic()
    booted.systemctl("stop", REGISTRY)
    timings["registry stop"] = time.monotonic() - started
    registry_log = booted.journal(REGISTRY, lines=200)
    assert "CancelledError" not in registry_log and "Traceback" not in registry_log, registry_log
    assert timings["registry stop"] < 2.0, registry_log
    booted.systemctl("start", REGISTRY)
    _wait_hosts_up(cli, booted)

    # A clean stop of the machine agent leaves nothing of it behind (KillMode=process).
    started = time.monotonic()
    booted.systemctl("stop", MACHINE)
    timings["machine agent stop"] = time.monotonic() - started
    left = _processes_of(booted, MACHINE)
    assert not left, f"left running after {MACHINE} stopped: {left}"
    booted.systemctl("start", MACHINE)
    _assert_serves(booted, link)

    # Reboot: systemd stops everything and PID 1 ends; boot again, everything serves again.
    booted.run(["systemctl", "reboot"], check=False)
    booted.wait_down(timeout=90)
    timings["second boot"] = booted.boot()
    _wait_units_up(booted)
    assert "machine settings unchanged" in booted.journal(FIRSTBOOT)
    _wait_hosts_up(cli, booted)
    _assert_serves(booted, link)
    print(f"\nexposure {exposure}\ntimings { ({k: round(v, 2) for k, v in timings.items()}) }")


# ---- preparing the root ------------------------------------------------------------------


def _download_gunicorn(target: Path) -> Path:
    """gunicorn and its one dependency as wheels, fetched here with pip (the netns is
    offline); the app's requirements point uv at them."""
    rootfs.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", "--python-version", "3.11", "--dest", str(target),
         "gunicorn>=22", "packaging"],
        timeout=300,
    )  # fmt: skip
    return target


def _gunicorn_app(folder: Path) -> Path:
    folder.mkdir()
    (folder / "Procfile").write_text("web: gunicorn --bind 127.0.0.1:$PORT --workers 2 app:app\n")
    # No health window (the default is 10 s): the redeploys check adoption, not the window.
    (folder / "paas.toml").write_text(f'[app]\nname = "{APP}"\nmin_healthy_s = 0\n')
    (folder / "requirements.txt").write_text(
        f"--no-index\n--find-links {TEST_WHEELS}\ngunicorn>=22\n"
    )
    (folder / "app.py").write_text(
        "import os\n\n\n"
        "def app(environ, start_response):\n"
        '    body = f"Hello from gunicorn worker {os.getpid()}".encode()\n'
        '    start_response("200 OK", [("Content-Type", "text/plain")])\n'
        "    return [body]\n"
    )
    return folder


def _registry_by_hand(image: ImageHost) -> dict[str, str]:
    """/etc/paas/registry.toml written by an operator (no paas-firstboot header, so the first
    boot of a machine leaves it alone) and `paas-registry init` run as its user."""
    settings = image.path("/etc/paas/registry.toml")
    settings.write_text(
        'state_dir = "/var/lib/paas/registry"\nbind_host = "0.0.0.0"\nbind_port = 8070\n'
        f'domain = "{DOMAIN}"\n'
    )
    os.chown(settings, 0, image.ids("paas-registry")[1])
    settings.chmod(0o640)
    argv = ["/opt/paas/venv/bin/paas-registry", "init", "--config", "/etc/paas/registry.toml",
            "--json"]  # fmt: skip
    done = subprocess.run(
        image.argv(argv, {"HOME": "/nonexistent"}, user="paas-registry"),
        capture_output=True, text=True, timeout=120, check=False, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _frontend_by_hand(image: ImageHost, url: str, join_token: str, pinned: str) -> None:
    settings = image.path("/etc/paas/agent-frontend.toml")
    settings.write_text(
        f'role = "frontend"\nregistry_url = "{url}"\njoin_token = "{join_token}"\n{pinned}'
        f'name = "edge"\naddress = "{FRONTEND_ADDRESS}"\nstate_dir = "/var/lib/paas/frontend"\n'
        "http_port = 80\nhttps_port = 443\n"
    )
    settings.chmod(0o600)


def _firstboot_reads(image: ImageHost, imds_url: str) -> None:
    """The fake IMDS instead of 169.254.169.254: a drop-in, as an operator would add one."""
    dropins = image.path("/etc/systemd/system/paas-firstboot.service.d")
    dropins.mkdir(parents=True, exist_ok=True)
    (dropins / "imds.conf").write_text(
        f"[Service]\nEnvironment=AWS_EC2_METADATA_SERVICE_ENDPOINT={imds_url}\n"
    )


# ---- steps ---------------------------------------------------------------------------------


def _wait_units_up(booted: BootedHost) -> None:
    for unit in (FIRSTBOOT, REGISTRY, MACHINE, FRONTEND):
        booted.until(lambda u=unit: booted.show(u, "ActiveState") == "active",
                     what=f"{unit} to be active", unit=unit)  # fmt: skip
    failed = booted.systemctl("list-units", "--failed", "--plain", "--no-legend")
    booted.until(lambda: booted.state() == "running", what=f"a clean boot; failed: {failed}")


class _Cli:
    def __init__(self, url: str, admin: str, pin: str, work: Path) -> None:
        self.url = url
        self.admin = admin
        self.env = {**os.environ, "PAAS_REGISTRY_URL": url, "PAAS_TOKEN": admin,
                    "PAAS_REGISTRY_FINGERPRINT": pin,
                    "PAAS_CONFIG": str(work / "cli.json")}  # fmt: skip

    def run(self, *args: str, timeout: float = 120) -> str:
        return rootfs.run([str(BIN / "paas"), *args], timeout=timeout, env=self.env).stdout

    def deploy(self, folder: Path) -> None:
        out = self.run("deploy", str(folder), timeout=180)
        assert "routed" in out, out

    def hosts(self) -> dict[str, str]:
        try:
            answer = httpx.get(f"{self.url}/v1/hosts", timeout=5, verify=False,
                               headers={"Authorization": f"Bearer {self.admin}"})  # fmt: skip
        except httpx.HTTPError:
            return {}
        return {h["name"]: h["state"] for h in answer.json()} if answer.status_code == 200 else {}


def _wait_hosts_up(cli: _Cli, booted: BootedHost) -> None:
    booted.until(lambda: cli.hosts() == {INSTANCE_ID: "up", "edge": "up"},
                 what="both agents to be up", unit=MACHINE)  # fmt: skip


def _assert_sandboxed(booted: BootedHost, image: ImageHost) -> dict[str, float]:
    """What the units ask for holds in the running processes; exposure as systemd rates it."""
    registry = booted.proc_status(booted.main_pid(REGISTRY))
    assert registry["NoNewPrivs"].strip() == "1" and registry["Seccomp"].strip() == "2"
    assert registry["Uid"].split()[0] == str(image.ids("paas-registry")[0])
    assert int(registry["CapEff"], 16) == 0
    pid1_tmp = _inode(booted, 1, "/tmp")
    for unit in (MACHINE, FRONTEND):
        pid = booted.main_pid(unit)
        status = booted.proc_status(pid)
        assert status["Uid"].split()[0] == "0" and status["NoNewPrivs"].strip() == "1", unit
        assert status["Seccomp"].strip() == "2", unit  # SystemCallFilter
        mounts = booted.run(["cat", f"/proc/{pid}/mountinfo"]).stdout.splitlines()
        root_mount = next(line for line in mounts if line.split()[4] == "/")
        assert "ro" in root_mount.split()[5].split(","), (unit, root_mount)  # ProtectSystem
        assert _inode(booted, pid, "/tmp") == pid1_tmp, unit  # no PrivateTmp (adoption)
    assert booted.show(MACHINE, "Delegate") == "yes"
    assert booted.show(FRONTEND, "Delegate") == "no"
    exposure = {}
    for unit in EXPOSURE_AT_MOST:
        text = booted.run(["systemd-analyze", "security", "--no-pager", unit], check=False)
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", text.stdout)
        assert found, text.stdout[-2000:] + text.stderr
        exposure[unit] = float(found.group(1))
    assert all(exposure[u] <= limit for u, limit in EXPOSURE_AT_MOST.items()), exposure
    return exposure


def _inode(booted: BootedHost, pid: int, path: str) -> str:
    return booted.run(["stat", "-L", "-c", "%d:%i", f"/proc/{pid}/root{path}"]).stdout.strip()


FETCH = """
import json, sys
import httpx
url, host, times = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = []
with httpx.Client(verify=False, timeout=5) as client:
    for _ in range(times):
        try:
            r = client.get(url, headers={"Host": host})
            out.append([r.status_code, r.text[:300]])
        except httpx.HTTPError as exc:
            out.append([0, repr(exc)])
print(json.dumps(out))
"""


def _assert_serves(booted: BootedHost, link: Link, *, times: int = 1) -> None:
    """Over HTTPS through the frontend's HAProxy (on its address, 127.0.0.1 in the netns)
    and the machine's nginx (which answers only a frontend's connections) to the app."""
    host = f"{APP}.{DOMAIN}"
    url = f"https://{FRONTEND_ADDRESS}:443/"
    argv = [*link.exec_argv(), sys.executable, "-c", FETCH, url, host, str(times)]
    last: list[str] = []

    def answers() -> bool:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            last[:] = [done.stderr[-1000:]]
            return False
        results = json.loads(done.stdout)
        last[:] = [f"{status} {text}" for status, text in results]
        return all(status == 200 and "gunicorn worker" in text for status, text in results)

    try:
        booted.until(answers, what=f"{host} to answer through HAProxy and nginx", unit=MACHINE)
    except AssertionError as exc:
        raise AssertionError(f"{last}\n{exc}") from None


def _crash_and_restart(booted: BootedHost, unit: str) -> None:
    before = booted.main_pid(unit)
    restarts = int(booted.show(unit, "NRestarts"))
    booted.run(["sh", "-c", f"kill -KILL {before}"])  # the shell builtin: no procps here
    booted.until(
        lambda: (
            int(booted.show(unit, "NRestarts")) > restarts
            and booted.show(unit, "ActiveState") == "active"
            and booted.main_pid(unit) not in (0, before)
        ),
        what=f"systemd to restart {unit}",
        unit=unit,
    )


def _assert_tmp_alive(booted: BootedHost, *pids: int) -> None:
    """The adopted processes (this machine's pids) still see the host's /tmp and /var/tmp,
    not a private one that systemd deleted when it restarted the agent's unit."""
    assert booted.pid1 is not None
    for path in ("tmp", "var/tmp"):
        shared = os.stat(f"/proc/{booted.pid1}/root/{path}")
        for pid in pids:
            seen = os.stat(f"/proc/{pid}/root/{path}")
            assert (seen.st_dev, seen.st_ino) == (shared.st_dev, shared.st_ino), (pid, path)
            assert seen.st_nlink > 0, (pid, path)
            mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            gone = [m for m in mounts if m.split()[4] == f"/{path}" and "deleted" in m]
            assert not gone, gone


def _kill_a_worker_and_see_it_replaced(
    image: ImageHost, booted: BootedHost, link: Link, master: int
) -> None:
    workers = sorted(p.pid for p in psutil.Process(master).children())
    assert len(workers) == 2, workers
    os.kill(workers[0], 9)  # a process this test started (inside its namespace), by pid

    def replaced() -> bool:
        now = {p.pid for p in psutil.Process(master).children()}
        return len(now) == 2 and workers[0] not in now

    booted.until(replaced, what="gunicorn to replace its worker", unit=MACHINE, timeout=30)
    _assert_serves(booted, link, times=4)


def _processes_of(booted: BootedHost, unit: str) -> list[str]:
    """Processes still in the unit's cgroup (and below it), by command line."""
    group = booted.show(unit, "ControlGroup")
    if not group:
        return []
    done = booted.run(["sh", "-c", f"cat $(find '/sys/fs/cgroup{group}' -name cgroup.procs) "
                       "2>/dev/null || true"])  # fmt: skip
    left = []
    for pid in done.stdout.split():
        cmd = booted.run(["cat", f"/proc/{pid}/cmdline"], check=False).stdout
        left.append(f"{pid}: {cmd.replace(chr(0), ' ').strip()}")
    return left


def _masters(image: ImageHost, match: Callable[[str], bool]) -> list[int]:
    """Masters (parent is not a match itself) of the processes with this root."""
    found = []
    for pid in rootfs.processes_in(image.root):
        try:
            proc = psutil.Process(pid)
            if not match(" ".join(proc.cmdline())):
                continue
            parent = proc.parent()
            if parent is not None and match(" ".join(parent.cmdline())):
                continue
        except psutil.Error:
            continue
        found.append(pid)
    return found


def _one(found: list[int], what: str) -> int:
    assert len(found) == 1, f"expected one {what}, found {found}"
    return found[0]


def _nginx_master(image: ImageHost) -> int:
    return _one(_masters(image, lambda c: c.startswith("nginx: master")), "nginx master")


def _haproxy_master(image: ImageHost) -> int:
    return _one(_masters(image, lambda c: "haproxy" in c and "-W" in c.split()), "HAProxy")


def _gunicorn_master(image: ImageHost) -> int:
    # Its venv's script, run by python (not the `sh -c` of the Procfile line around it).
    return _one(_masters(image, lambda c: "bin/gunicorn " in c and "app:app" in c), "gunicorn")
