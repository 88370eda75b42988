#!/opt/paas/venv/bin/python3
"""paas-firstboot: turn EC2 user data into this host's paas settings, at every boot.

Reads the user data (IMDSv2, or `--user-data FILE`), validates it with the same settings
models the agent and the registry use, and writes /etc/paas/agent-<role>.toml (or
/etc/paas/registry.toml). The units `paas-agent@<role>` and `paas-registry` start only when
their file exists (ConditionPathExists), and this runs before them, so booting the image
with user data is all it takes to join. Bad user data is one clear error and changes nothing;
unchanged user data rewrites nothing. The user-data format is documented in ami/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("machine", "frontend", "registry")
HEADER = "# Written by paas-firstboot from EC2 user data; edit the user data, not this file.\n"
DEFAULT_IMDS = "http://169.254.169.254"
IMDS_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"  # the variable the AWS SDKs honour too
TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")
APP_USER = "paas-app"
REGISTRY_USER = "paas-registry"
PAAS_BIN = Path("/opt/paas/venv/bin")
# [package_index]: where a machine's app builds find packages
# (agent/machine/build/package_index.py).
INDEX_KEYS = (
    "index_url",
    "extra_index_urls",
    "find_links",
    "trusted_hosts",
    "no_index",
    "build_env",
)


class FirstbootError(Exception):
    """User data or metadata this host cannot be configured from; one clear line."""


# ---- where the user data comes from ------------------------------------------------------


class Imds:
    """EC2 instance metadata service v2: a session token first, then every read with it."""

    def __init__(self, endpoint: str, *, timeout_s: float = 2.0, wait_s: float = 60.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self.wait_s = wait_s
        self._token: str | None = None

    def _open(self, request: urllib.request.Request) -> bytes:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return response.read()

    def token(self) -> str:
        """The session token; retried until `wait_s` (the network may still be coming up)."""
        if self._token is not None:
            return self._token
        request = urllib.request.Request(
            f"{self.endpoint}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
        )
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                self._token = self._open(request).decode().strip()
                return self._token
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() >= deadline:
                    raise FirstbootError(
                        f"the instance metadata service at {self.endpoint} did not answer"
                        f" within {self.wait_s:g}s: {exc}"
                    ) from exc
                time.sleep(1.0)

    def get(self, path: str) -> str | None:
        """GET latest/<path> with the token; None when it does not exist (404)."""
        request = urllib.request.Request(
            f"{self.endpoint}/latest/{path}",
            headers={"X-aws-ec2-metadata-token": self.token()},
        )
        try:
            return self._open(request).decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise FirstbootError(f"metadata {path}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise FirstbootError(f"metadata {path}: {exc}") from exc


@dataclass(frozen=True)
class Facts:
    """What this instance knows about itself, for the defaults of name and address."""

    instance_id: str | None
    local_ipv4: str | None


# ---- user data -> validated settings ---------------------------------------------------


@dataclass(frozen=True)
class HostConfig:
    role: str
    path: Path  # the settings file to write
    values: dict[str, Any]


def parse_user_data(text: str) -> dict[str, Any] | None:
    """The TOML document, or None when the user data is for cloud-init (#cloud-config...)."""
    stripped = text.lstrip()
    if not stripped:
        raise FirstbootError("the user data is empty")
    if stripped.startswith(("#cloud-config", "#!", "#include", "Content-Type:")):
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FirstbootError(f"the user data is not valid TOML: {exc}") from exc


def build_config(data: dict[str, Any], facts: Facts, *, etc: Path, default_role: str) -> HostConfig:
    """Check every value and fill the image's defaults; raises FirstbootError."""
    known = {"role", "registry_url", "join_token", "name", "address", "agent", "registry"}
    known |= {"package_index"}  # a machine's [package_index], merged into its settings
    known |= {"registry_fingerprint"}  # sha256:... of an https:// registry's certificate
    unknown = sorted(set(data) - known)
    if unknown:
        raise FirstbootError(f"unknown user-data keys {unknown}; allowed: {sorted(known)}")
    role = data.get("role", default_role)
    if role not in ROLES:
        raise FirstbootError(f"role {role!r} must be one of {', '.join(ROLES)}")
    if role == "registry":
        return _registry_config(data, etc=etc)
    for key in ("registry_url", "join_token"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise FirstbootError(f"{key} is required for a {role} host")
    if not TOKEN_RE.fullmatch(data["join_token"]):
        raise FirstbootError("join_token must be the token `paas-registry init` printed")
    extra = _table(data, "agent")
    index = _table(data, "package_index")
    if index and role != "machine":
        raise FirstbootError("[package_index] is for machine hosts (they build the apps)")
    unknown = sorted(set(index) - set(INDEX_KEYS))
    if unknown:
        raise FirstbootError(f"unknown [package_index] keys {unknown}; allowed: {list(INDEX_KEYS)}")
    twice = sorted(set(index) & set(extra))
    if twice:
        raise FirstbootError(f"{twice} set in both [agent] and [package_index]; keep one")
    name = data.get("name") or facts.instance_id or socket.gethostname().split(".")[0].lower()
    address = data.get("address") or facts.local_ipv4
    if not address:
        raise FirstbootError("address is required: the metadata service gave no private IPv4")
    values: dict[str, Any] = {
        "role": role,
        "registry_url": data["registry_url"],
        "join_token": data["join_token"],
        "name": name,
        "address": address,
        "state_dir": f"/var/lib/paas/{role}",
    }
    if data.get("registry_fingerprint"):
        values["registry_fingerprint"] = data["registry_fingerprint"]
    # A machine agent runs each app as its own uid (app_uids in the agent's settings): no
    # shared app user to name here (run_as_user is deprecated and ignored).
    if role != "machine":
        values.update(http_port=80, https_port=443)
    values.update(extra)
    values.update(index)
    _validate_agent(values)
    return HostConfig(role=role, path=etc / f"agent-{role}.toml", values=values)


def _registry_config(data: dict[str, Any], *, etc: Path) -> HostConfig:
    agent_keys = ("registry_url", "registry_fingerprint", "join_token", "name", "address")
    for key in (*agent_keys, "agent", "package_index"):
        if key in data:
            raise FirstbootError(f"{key} is for agent hosts, not for a registry host")
    values: dict[str, Any] = {
        "state_dir": "/var/lib/paas/registry",
        "bind_host": "0.0.0.0",
        "bind_port": 8070,
    }
    values.update(_table(data, "registry"))
    try:
        from controller.settings import RegistrySettings

        RegistrySettings(**values)
    except ImportError:
        pass  # checked again when paas-registry starts
    except ValueError as exc:
        raise FirstbootError(f"invalid [registry] settings: {_one_line(exc)}") from exc
    return HostConfig(role="registry", path=etc / "registry.toml", values=values)


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise FirstbootError(f"[{key}] must be a table")
    return value


def _validate_agent(values: dict[str, Any]) -> None:
    try:
        from agent.settings import AgentSettings
    except ImportError:
        return  # outside the image (no project installed): the agent checks at start
    try:
        AgentSettings(**values)
    except ValueError as exc:
        raise FirstbootError(f"invalid agent settings: {_one_line(exc)}") from exc


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


# ---- settings -> files -------------------------------------------------------------------


def to_toml(values: dict[str, Any]) -> str:
    """A flat TOML document: strings, numbers, booleans and tables of those (inline)."""
    return HEADER + "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise FirstbootError(f"control characters are not allowed in {value!r}")
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are TOML basic strings
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise FirstbootError(f"unsupported value {value!r}")


def write_config(config: HostConfig, *, etc: Path) -> bool:
    """Write the settings file (0600, or 0640 for the registry's user); False if unchanged.

    Files of the other roles that this script wrote earlier are removed, so a host whose
    user data changed role does not start both agents.
    """
    text = to_toml(config.values)
    if tomllib.loads(text) != config.values:  # never write what would read back differently
        raise FirstbootError("internal error: the settings do not round-trip through TOML")
    etc.mkdir(mode=0o755, parents=True, exist_ok=True)
    for other in _role_files(etc):
        if other != config.path and other.is_file() and other.read_text().startswith(HEADER):
            other.unlink()
            print(f"paas-firstboot: removed {other} (the user data names another role)")
    if config.path.is_file() and config.path.read_text() == text:
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{config.path.name}.", dir=etc)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if config.role == "registry" and os.geteuid() == 0:
            os.chown(tmp, 0, _gid_of(REGISTRY_USER))
            os.chmod(tmp, 0o640)
        os.replace(tmp, config.path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _role_files(etc: Path) -> list[Path]:
    return [etc / "agent-machine.toml", etc / "agent-frontend.toml", etc / "registry.toml"]


def _gid_of(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError as exc:
        raise FirstbootError(f"the image has no {user!r} user (was it provisioned?)") from exc


def init_registry(config: HostConfig, *, etc: Path) -> None:
    """Create the registry database once, as its own user; tokens go to a 0600 root file."""
    tokens = etc / "registry-tokens.json"
    if tokens.exists():
        return
    argv = [str(PAAS_BIN / "paas-registry"), "init", "--config", str(config.path), "--json"]
    drop: dict[str, Any] = {}
    if os.geteuid() == 0:  # the database belongs to the registry's own user
        entry = pwd.getpwnam(REGISTRY_USER)
        drop = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, check=False, cwd="/", **drop
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirstbootError(f"paas-registry init could not run: {exc}") from exc
    if done.returncode != 0:
        raise FirstbootError(f"paas-registry init failed: {done.stderr.strip()[-500:]}")
    fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(done.stdout)
    print(
        "paas-firstboot: registry initialised; admin and join tokens and the registry's"
        f" certificate fingerprint are in {tokens}"
    )


# ---- command line --------------------------------------------------------------------------


def image_role(etc: Path) -> str:
    """The role the image was built for (Packer's `role`), the default for the user data."""
    try:
        return str(tomllib.loads((etc / "image.toml").read_text()).get("role", "machine"))
    except (OSError, tomllib.TOMLDecodeError):
        return "machine"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paas-firstboot", description=__doc__.split("\n")[0])
    parser.add_argument("--user-data", type=Path, help="read this file instead of IMDSv2")
    parser.add_argument("--imds-url", default=os.environ.get(IMDS_ENV, DEFAULT_IMDS))
    parser.add_argument("--etc", type=Path, default=Path("/etc/paas"), help=argparse.SUPPRESS)
    parser.add_argument("--imds-wait", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FirstbootError as exc:
        print(f"paas-firstboot: {exc}; nothing was changed", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    imds = Imds(args.imds_url, wait_s=args.imds_wait)
    if args.user_data is not None:
        try:
            text: str | None = args.user_data.read_text()
        except OSError as exc:
            raise FirstbootError(f"cannot read {args.user_data}: {exc}") from exc
        facts = Facts(instance_id=None, local_ipv4=None)
    else:
        text = imds.get("user-data")
        facts = Facts(
            instance_id=imds.get("meta-data/instance-id"),
            local_ipv4=imds.get("meta-data/local-ipv4"),
        )
    if text is None:
        print("paas-firstboot: no user data; this host stays unconfigured")
        return 0
    data = parse_user_data(text)
    if data is None:
        print("paas-firstboot: the user data is for cloud-init; leaving it to cloud-init")
        return 0
    config = build_config(data, facts, etc=args.etc, default_role=image_role(args.etc))
    changed = write_config(config, etc=args.etc)
    state = "written" if changed else "unchanged"
    print(f"paas-firstboot: {config.role} settings {state} in {config.path}")
    if config.role == "registry":
        init_registry(config, etc=args.etc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
