"""The host image end to end, short of AWS: a debootstrapped Debian 12 root is provisioned by
ami/provision.sh, its units pass `systemd-analyze`, and it "boots" (each unit's ExecStart,
chrooted, in a network namespace) from user data served over IMDSv2, joins a registry started
here, runs examples/hello as paas-app and answers through its own nginx. Then it reboots, and
finally becomes a registry host from new user data.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import short_dir
from tests.support.ports import free_port
from tests.system.ami import rootfs
from tests.system.ami.fake_imds import endpoint, fake_imds
from tests.system.ami.image_host import REPO, UPLOAD, ImageHost
from tests.system.ami.netns import Link, veth_namespace
from tests.system.ami.tools import require
from tests.system.ami.units import Unit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

BIN = Path(sys.executable).parent
DOMAIN = "ami.test"
INSTANCE_ID = "i-0123456789abcdef0"
UNITS = ("paas-firstboot.service", "paas-registry.service", "paas-agent@machine.service",
         "paas-agent@frontend.service")  # fmt: skip


def test_provisioned_image_boots_from_user_data_joins_and_serves(
    tmp_path: Path, image_wheels: Path
) -> None:
    require("debootstrap", "ip", "chroot", "mount", "tar", root=True)
    tar = rootfs.cached_root()
    wheels = image_wheels
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        short_dir("paas-ami-") as work,
        rootfs.unpacked(tar, work / "root") as root,
        rootfs.mounted(root),
        veth_namespace("i") as link,
    ):
        host = ImageHost(root, link, logs)
        registry: subprocess.Popen[bytes] | None = None
        try:
            host.upload(wheels)
            _provision(host, version)
            _verify_units(host)
            registry, url, tokens = _start_registry(link, tmp_path / "registry")
            user_data = f'registry_url = "{url}"\njoin_token = "{tokens["join_token"]}"\n'
            if tokens.get("registry_fingerprint"):  # an https:// registry: its pin
                user_data += f'registry_fingerprint = "{tokens["registry_fingerprint"]}"\n'
            with fake_imds(
                link.host_addr, user_data=user_data, instance_id=INSTANCE_ID,
                local_ipv4=link.ns_addr,
            ) as imds:  # fmt: skip
                agent = _boot(host, endpoint(imds), expect="written")
                _wait_host_up(url, tokens["admin_token"], agent, host, link)
                _deploy_hello(url, tokens, tmp_path)
                _join_test_side_as_frontend(url, tokens["join_token"], link)
                _assert_serves(host, link, agent)
                _assert_apps_unprivileged(host)
                _assert_logs_rotate(host)

                # Crash: kill -9 the agent. Its nginx and app keep serving without it, and
                # the agent that Restart=on-failure starts takes them over.
                os.kill(agent.pid, signal.SIGKILL)
                agent.wait(timeout=10)
                _assert_serves(host, link, None)
                restarted = dt.datetime.now(dt.UTC)
                agent = host.start_unit(_agent_unit(host))
                _wait_host_up(url, tokens["admin_token"], agent, host, link, since=restarted)
                _assert_serves(host, link, agent)
                _assert_apps_unprivileged(host)

                # Reboot: stop everything as systemd would, then boot again.
                assert host.stop(agent) == 0, host.log_of(_agent_unit(host))
                _assert_all_stopped(host)
                agent = _boot(host, endpoint(imds), expect="unchanged")
                _assert_serves(host, link, agent)
                host.stop(agent)

                # The same image as a registry host: new user data, new role.
                imds.paths["user-data"] = f'role = "registry"\n[registry]\ndomain = "{DOMAIN}"\n'
                _registry_host(host, link, endpoint(imds))
        finally:
            host.stop_all()
            if registry is not None:
                host.stop(registry, timeout=10)


# ---- steps ------------------------------------------------------------------------------


def _provision(host: ImageHost, version: str) -> None:
    env = {"PAAS_VERSION": version, "PAAS_UPLOAD": UPLOAD}
    first = host.run(["bash", f"{UPLOAD}/provision.sh"], env=env, timeout=900)
    assert "installing: nginx haproxy python3" in first.stdout
    second = host.run(["bash", f"{UPLOAD}/provision.sh"], env=env, timeout=300)
    assert "Debian packages already installed" in second.stdout, second.stdout
    assert "created system user" not in second.stdout  # idempotent

    app_uid, app_gid = host.ids("paas-app")
    passwd = host.path("/etc/passwd").read_text()
    assert 0 < app_uid < 1000 and passwd.count("paas-app:") == 1  # a system user, once
    assert f"paas-app:x:{app_uid}:{app_gid}:paas app:/nonexistent:/usr/sbin/nologin" in passwd
    expected = {
        "/etc/paas": (0o755, 0, 0),
        "/var/lib/paas": (0o751, 0, 0),
        "/var/lib/paas/machine": (0o750, 0, app_gid),
        "/var/lib/paas/frontend": (0o700, 0, 0),
        "/var/lib/paas/registry": (0o700, *host.ids("paas-registry")),
        "/var/log/paas": (0o750, 0, host.gid("adm")),
        "/var/cache/paas": (0o700, 0, 0),
    }
    for folder, (mode, uid, gid) in expected.items():
        info = host.path(folder).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, uid, gid), folder
    for service in ("nginx.service", "haproxy.service"):  # the agents run their own
        assert os.readlink(host.path(f"/etc/systemd/system/{service}")) == "/dev/null"
    wants = host.path("/etc/systemd/system/multi-user.target.wants")
    assert set(UNITS) <= {p.name for p in wants.iterdir()}
    assert host.run(["/opt/paas/venv/bin/paas-agent", "--help"]).returncode == 0


def _verify_units(host: ImageHost) -> None:
    paths = [f"/etc/systemd/system/{unit}" for unit in UNITS]
    done = host.run(["systemd-analyze", "verify", *paths], check=False)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        done.stdout + done.stderr
    )
    # Exposure as `systemd-analyze security` rates it (0 best, 10 worst); the agent is root.
    for unit, threshold in (("paas-registry.service", 25), ("paas-agent@machine.service", 50)):
        done = host.run(
            ["systemd-analyze", "security", "--offline=yes", f"--threshold={threshold}",
             f"/etc/systemd/system/{unit}"],
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    for unit in UNITS:  # systemd refuses to start a unit whose ReadWritePaths= is missing
        name, _, rest = unit.partition("@")
        instance = rest.split(".")[0] if rest else None
        template = f"{name}@.service" if instance else unit
        for line in host.unit(template, instance=instance).values("Service", "ReadWritePaths"):
            for path in line.split():
                assert path.startswith("-") or host.path(path).is_dir(), (unit, path)


def _start_registry(link: Link, state: Path) -> tuple[subprocess.Popen[bytes], str, dict]:
    init = rootfs.run(
        [str(BIN / "paas-registry"), "init", "--state-dir", str(state), "--json"], timeout=60
    )
    tokens = json.loads(init.stdout)
    port = free_port(link.host_addr)  # below the ephemeral range
    with (state / "registry.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(BIN / "paas-registry"), "serve", "--state-dir", str(state), "--host",
             link.host_addr, "--port", str(port), "--domain", DOMAIN],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    # Not loopback: the registry serves HTTPS with the certificate `init` made (its pin).
    scheme = "https" if tokens.get("registry_fingerprint") else "http"
    url = f"{scheme}://{link.host_addr}:{port}"
    _until(lambda: _get(f"{url}/v1/health") == 200, what="the registry to answer", proc=proc)
    return proc, url, tokens


def _agent_unit(host: ImageHost) -> Unit:
    return host.unit("paas-agent@.service", instance="machine")


def _boot(host: ImageHost, imds_url: str, *, expect: str) -> subprocess.Popen[bytes]:
    """What systemd does at boot: paas-firstboot, then the agent units whose condition holds."""
    firstboot = host.unit("paas-firstboot.service")
    env = {**firstboot.environment, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url}
    done = host.run(firstboot.exec_start, env=env)
    assert f"machine settings {expect} in /etc/paas/agent-machine.toml" in done.stdout
    settings = host.path("/etc/paas/agent-machine.toml")
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600  # it holds the join token
    frontend = host.unit("paas-agent@.service", instance="frontend")
    assert not host.path(frontend.value("Unit", "ConditionPathExists") or "/").exists()
    agent = _agent_unit(host)
    assert host.path(agent.value("Unit", "ConditionPathExists") or "/missing").is_file()
    return host.start_unit(agent)


def _wait_host_up(
    url: str,
    admin: str,
    agent: subprocess.Popen[bytes],
    host: ImageHost,
    link: Link,
    *,
    since: dt.datetime | None = None,
) -> None:
    """Up, and (with `since`) reported by this agent run, not by the one before it."""

    def up() -> bool:
        response = httpx.get(
            f"{url}/v1/hosts", headers={"Authorization": f"Bearer {admin}"}, verify=False
        )
        found = {h["name"]: h for h in response.json()}.get(INSTANCE_ID, {})
        if found.get("state") != "up":
            return False
        beat = found.get("last_heartbeat")
        return since is None or (
            beat is not None and dt.datetime.fromisoformat(beat.replace("Z", "+00:00")) > since
        )

    _until(up, what="the host to join", proc=agent, log=lambda: host.log_of(_agent_unit(host)))
    hosts = httpx.get(
        f"{url}/v1/hosts", headers={"Authorization": f"Bearer {admin}"}, verify=False
    ).json()
    # Named after the instance id, reachable on its private IPv4: the IMDS defaults.
    assert [(h["name"], h["address"], h["role"]) for h in hosts if h["role"] == "machine"] == [
        (INSTANCE_ID, link.ns_addr, "machine")
    ]


def _join_test_side_as_frontend(url: str, join_token: str, link: Link) -> None:
    """The machine's nginx serves apps only to frontends' addresses: the test's end of the
    veth joins as one (after the deploy, which would otherwise wait for it to route)."""
    answer = httpx.post(
        f"{url}/v1/hosts/join",
        json={
            "name": "test-edge",
            "role": "frontend",
            "address": link.host_addr,
            "proxy_port": 443,
        },
        headers={"Authorization": f"Bearer {join_token}"},
        verify=False,
    )
    assert answer.status_code == 200, answer.text


def _deploy_hello(url: str, tokens: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, "PAAS_REGISTRY_URL": url, "PAAS_TOKEN": tokens["admin_token"],
           "PAAS_REGISTRY_FINGERPRINT": tokens.get("registry_fingerprint", ""),
           "PAAS_CONFIG": str(tmp_path / "cli.json")}  # fmt: skip
    paas = str(BIN / "paas")
    rootfs.run([paas, "apps:create", "hello"], timeout=60, env=env)
    done = rootfs.run([paas, "deploy", str(REPO / "examples" / "hello")], timeout=300, env=env)
    assert "routed" in done.stdout, done.stdout


def _assert_serves(host: ImageHost, link: Link, agent: subprocess.Popen[bytes] | None) -> None:
    """HTTP to the namespace address, Host header set: the image's nginx -> the app."""
    url = f"http://{link.ns_addr}:8081/"

    def answers() -> bool:
        try:
            response = httpx.get(url, headers={"Host": f"hello.{DOMAIN}"}, timeout=5)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and "Hello from hello" in response.text

    _until(answers, what=f"hello to answer on {url}", proc=agent,
           log=lambda: host.log_of(_agent_unit(host)))  # fmt: skip


def _assert_apps_unprivileged(host: ImageHost) -> None:
    app_uid, _ = host.ids("paas-app")
    www_uid, _ = host.ids("www-data")
    seen: dict[str, set[int]] = {"app": set(), "nginx worker": set()}
    for pid in rootfs.processes_in(host.root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue
        if "app.py" in cmdline:
            seen["app"].add(uid)
        elif "nginx: worker" in cmdline:
            seen["nginx worker"].add(uid)
    # The app runs under one unprivileged uid of its own (per-app uids) or paas-app.
    assert len(seen["app"]) == 1 and not seen["app"] & {0, www_uid}, seen
    (uid,) = seen["app"]
    assert uid == app_uid or uid >= 1000, seen
    assert seen["nginx worker"] == {www_uid}, seen


def _assert_logs_rotate(host: ImageHost) -> None:
    app_logs = list(host.path("/var/log/paas/machine/hello").glob("*.log"))
    assert app_logs, "the app's log is not under /var/log/paas/machine/hello"
    done = host.run(["logrotate", "--debug", "/etc/logrotate.d/paas"])
    text = done.stdout + done.stderr
    assert "considering log /var/log/paas/machine/hello/" in text, text
    assert not [line for line in text.splitlines() if line.startswith("error")], text


def _assert_all_stopped(host: ImageHost) -> None:
    """The agent stops its apps and nginx before it exits (systemd would SIGKILL leftovers)."""
    deadline = time.monotonic() + 5
    while (left := rootfs.processes_in(host.root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    described = {pid: _cmdline(pid) for pid in left}
    assert not described, (
        f"left running after the agent stopped: {described}\n{host.log_of(_agent_unit(host))}"
    )


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def _registry_host(host: ImageHost, link: Link, imds_url: str) -> None:
    firstboot = host.unit("paas-firstboot.service")
    env = {**firstboot.environment, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url}
    done = host.run(firstboot.exec_start, env=env)
    assert "registry settings written" in done.stdout, done.stdout
    assert not host.path("/etc/paas/agent-machine.toml").exists()  # one role per host
    tokens = host.path("/etc/paas/registry-tokens.json")
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert {"admin_token", "join_token"} <= set(json.loads(tokens.read_text()))
    assert (
        host.path("/var/lib/paas/registry/registry.db").stat().st_uid
        == host.ids("paas-registry")[0]
    )
    unit = host.unit("paas-registry.service")
    assert unit.user == "paas-registry"
    proc = host.start_unit(unit)
    urls = [f"{scheme}://{link.ns_addr}:8070/v1/health" for scheme in ("https", "http")]
    _until(lambda: 200 in map(_get, urls), what="the image's registry", proc=proc,
           log=lambda: host.log_of(unit))  # fmt: skip
    host.stop(proc, timeout=15)


# ---- helpers --------------------------------------------------------------------------------


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2, verify=False).status_code
    except httpx.HTTPError:
        return 0


def _until(
    check: Callable[[], bool],
    *,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Callable[[], str] | None = None,
    timeout: float = 60,
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) waiting for {what}\n"
                                 + (log() if log else ""))  # fmt: skip
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n" + (log() if log else ""))
        time.sleep(0.2)
