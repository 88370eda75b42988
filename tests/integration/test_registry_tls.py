"""The registry on the wire (issue 14 item 6): HTTPS off loopback, clients pin its certificate.

Real registry processes; the CLI as a real `paas` process and the agent's own client. Each
attack is done for real: a wrong pin, an impostor with another self-signed certificate for
the same names (it must never see a byte of the request, so no token), plain http:// to a
non-loopback address, and a registry bound to a real 198.18.0.0/15 address in a namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from agent.errors import RegistryCallFailed
from agent.link.client import RegistryClient
from agent.link.join import join_or_load_token
from agent.settings import AgentSettings
from cli.local import kill_tree
from common.registry_tls import (
    RegistryTrust,
    RegistryTrustError,
    check_urls,
    fingerprint_of,
    no_tls,
    parse_pins,
    sync_transport,
)
from controller.server.tls_identity import load_or_create, needs_tls
from tests.conftest import free_port
from tests.support import certgen

BIN = Path(sys.executable).parent
WRONG_PIN = "sha256:" + "0" * 64


@dataclass
class Registry:
    url: str
    admin: str
    join: str
    fingerprint: str
    proc: subprocess.Popen[bytes]
    log: Path


def _wait(check: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError, OSError):
            if check():  # type: ignore[operator]
                return
        assert proc.poll() is None, f"{what}: the registry exited\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{what}: not ready\n{log.read_text()}"
        time.sleep(0.1)


@contextlib.contextmanager
def registry(
    tmp: Path,
    *,
    host: str = "127.0.0.1",
    args: tuple[str, ...] = (),
    wrap: list[str] | None = None,
    port: int | None = None,
    tls: bool = False,
    name: str = "registry",
    env: dict[str, str] | None = None,
) -> Iterator[Registry]:
    """`paas-registry init` (its cert made unless --tls-cert/--tls-key in `args`) and
    `serve`; `tls`: serve the state folder's own cert even on loopback."""
    state = tmp / name
    files = tuple(a for i, a in enumerate(args) if a.startswith("--tls") or (
        i > 0 and args[i - 1].startswith("--tls")))  # fmt: skip
    init = subprocess.run(
        [str(BIN / "paas-registry"), "init", "--state-dir", str(state), "--json", *files],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    tokens = json.loads(init.stdout)
    if tls:
        args = (*args, *_tls_files(state))
    port = port or free_port()
    log = tmp / f"registry-{host}.log"
    argv = [str(BIN / "paas-registry"), "serve", "--state-dir", str(state),
            "--host", host, "--port", str(port), *args]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*(wrap or []), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    scheme = "http" if "--insecure-http" in args else "https"
    reg = Registry(
        f"{scheme}://{host}:{port}",
        tokens["admin_token"],
        tokens["join_token"],
        tokens["registry_fingerprint"],
        proc,
        log,
    )
    try:
        with _pinned(reg) as client:
            _wait(lambda: client.get(f"{reg.url}/v1/health").is_success, "health", proc, log)
        yield reg
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=10)


def _pinned(reg: Registry, pin: str | None = None) -> httpx.Client:
    trust = RegistryTrust(pins=parse_pins(pin or reg.fingerprint))
    return httpx.Client(transport=sync_transport([reg.url], trust, insecure_http=True), timeout=5)


def _tls_files(state: Path) -> tuple[str, ...]:
    tls = state / "tls"
    return ("--tls-cert", str(tls / "registry.crt"), "--tls-key", str(tls / "registry.key"))


@dataclass
class Impostor:
    """A TLS server with its own self-signed certificate for the registry's names; it
    records every byte a client sends after the handshake."""

    url: str
    fingerprint: str
    received: list[bytes] = field(default_factory=list)
    handshakes: int = 0  # finished on the server's side too
    connections: int = 0

    def heard(self) -> list[bytes]:
        """What each finished connection sent, once every handshake's connection is over."""
        deadline = time.monotonic() + 5
        while len(self.received) < self.handshakes and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received


@contextlib.contextmanager
def impostor(tmp: Path) -> Iterator[Impostor]:
    identity = load_or_create(tmp / "impostor", cert_file=None, key_file=None, names=["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(identity.cert_file, identity.key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    found = Impostor(f"https://127.0.0.1:{port}", identity.fingerprint)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            found.connections += 1
            conn.settimeout(3)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    found.handshakes += 1
                    data = b""
                    with contextlib.suppress(OSError):
                        while chunk := tls.recv(65536):
                            data += chunk
                            if b"\r\n\r\n" in data:  # a whole request: answer like a registry
                                tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]")
                    found.received.append(data)
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def paas(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PAAS_")}
    return subprocess.run(
        [str(BIN / "paas"), *argv], capture_output=True, text=True, timeout=60, env={**base, **env}
    )


# ---- pure rules ---------------------------------------------------------------------------


def test_pins_urls_and_binds() -> None:
    assert parse_pins(f"SHA256:{':'.join(['AB'] * 32)}, sha256:{'cd' * 32}") == (
        "sha256:" + "ab" * 32,
        "sha256:" + "cd" * 32,
    )
    for bad in ("ab" * 32, "md5:" + "ab" * 16, "sha256:xyz"):
        with pytest.raises(RegistryTrustError):
            parse_pins(bad)
    pinned = RegistryTrust(pins=(WRONG_PIN,))
    check_urls(["http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"], RegistryTrust())
    check_urls(["https://198.18.0.5:1"], pinned)
    with pytest.raises(RegistryTrustError, match="refusing plain http://"):
        check_urls(["http://127.0.0.1:1", "http://198.18.0.5:1"], pinned)
    with pytest.raises(RegistryTrustError, match="refusing plain http://"):
        check_urls(["http://registry.example:1"], pinned)  # a name may resolve anywhere
    with pytest.raises(RegistryTrustError, match="fingerprint"):
        check_urls(["https://127.0.0.1:1"], RegistryTrust())  # no trust on first use
    assert not needs_tls("127.0.0.1") and not needs_tls("::1") and not needs_tls("localhost")
    assert needs_tls("0.0.0.0") and needs_tls("198.18.0.5") and needs_tls("registry")


def test_generated_identity_is_kept_and_its_key_private(tmp_path: Path) -> None:
    first = load_or_create(tmp_path, cert_file=None, key_file=None, names=["198.18.0.5"])
    assert first.generated and (first.key_file.stat().st_mode & 0o777) == 0o600
    again = load_or_create(tmp_path, cert_file=None, key_file=None)
    assert not again.generated and again.fingerprint == first.fingerprint  # pins stay valid
    der = ssl.PEM_cert_to_DER_cert(first.cert_file.read_text())
    assert fingerprint_of(der) == first.fingerprint


# ---- the CLI ------------------------------------------------------------------------------


def test_cli_pins_the_registry_and_refuses_impostors(tmp_path: Path) -> None:
    config = tmp_path / "cli.json"
    env = {"PAAS_CONFIG": str(config)}
    with registry(tmp_path, tls=True) as reg, impostor(tmp_path) as fake:
        assert reg.url.startswith("https://")
        login = ["login", "--registry", reg.url, "--token", reg.admin]
        # No pin, no CA: refused before any connection (no trust on first use).
        done = paas(*login, env=env)
        assert done.returncode != 0 and "fingerprint" in done.stderr, done.stderr
        # A wrong pin: refused, and the error shows what the server presented.
        done = paas(*login, "--fingerprint", WRONG_PIN, env=env)
        assert done.returncode != 0 and reg.fingerprint in done.stderr, done.stderr
        assert not config.exists()
        # The right pin: logged in, the pin saved with the token.
        done = paas(*login, "--fingerprint", reg.fingerprint.upper().replace("SHA256", "sha256"),
                    env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        saved = json.loads(config.read_text())
        assert saved["registry_fingerprint"] == reg.fingerprint
        done = paas("apps:create", "tlsapp", env=env)
        assert done.returncode == 0, done.stderr
        done = paas("apps", env=env)
        assert done.returncode == 0 and "tlsapp" in done.stdout, done.stderr
        done = paas("audit", "--limit", "5", env=env)  # streams and operations (cli/api.py)
        assert done.returncode == 0 and "/v1/apps" in done.stdout, done

        # An impostor with its own certificate for the same names: refused, the pinned
        # fingerprint and the one it presented both named, and not one request byte sent.
        for verb in (["apps"], ["audit"]):
            done = paas(*verb, env={**env, "PAAS_REGISTRY_URL": fake.url})
            assert done.returncode != 0, done.stdout
            assert fake.fingerprint in done.stderr and reg.fingerprint in done.stderr
        assert fake.handshakes >= 2
        assert fake.heard() and all(data == b"" for data in fake.heard())

        # Plain http:// to a non-loopback address: refused before connecting.
        done = paas("apps", env={**env, "PAAS_REGISTRY_URL": "http://198.18.0.5:8070"})
        assert done.returncode != 0 and "refusing plain http://" in done.stderr, done.stderr


def test_cli_trusts_a_ca_and_refuses_a_self_signed_twin(tmp_path: Path) -> None:
    root, mid, leaf = certgen.chain(["localhost"])
    tls = tmp_path / "ca-tls"
    tls.mkdir()
    (tls / "chain.pem").write_text(leaf.cert_pem + mid.cert_pem)
    (tls / "leaf.key").write_text(leaf.key_pem)
    (tls / "root.pem").write_text(root.cert_pem)
    args = ("--tls-cert", str(tls / "chain.pem"), "--tls-key", str(tls / "leaf.key"))
    env = {"PAAS_CONFIG": str(tmp_path / "cli.json")}
    port = free_port()
    with registry(tmp_path, args=args, port=port) as reg, impostor(tmp_path) as fake:
        served = leaf.cert.public_bytes(serialization.Encoding.DER)
        assert reg.fingerprint == fingerprint_of(served)  # init printed the files' one
        url = f"https://localhost:{port}"
        done = paas("login", "--registry", url, "--token", reg.admin,
                    "--ca", str(tls / "root.pem"), env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert paas("apps", env=env).returncode == 0
        # The impostor's self-signed certificate names 127.0.0.1 and localhost too.
        done = paas("apps", env={**env, "PAAS_REGISTRY_URL": fake.url})
        assert done.returncode != 0 and "certificate" in done.stderr, done.stderr
        assert all(data == b"" for data in fake.heard())


# ---- the agent ----------------------------------------------------------------------------


def _agent(reg: Registry, tmp: Path, name: str, **over: object) -> AgentSettings:
    values: dict[str, object] = {
        "role": "machine",
        "registry_url": reg.url,
        "registry_fingerprint": reg.fingerprint,
        "join_token": reg.join,
        "name": name,
        "state_dir": tmp / name,
    }
    return AgentSettings(**{**values, **over})  # type: ignore[arg-type]


def test_agent_joins_and_watches_over_tls_and_refuses_impostors(tmp_path: Path) -> None:
    with registry(tmp_path, tls=True) as reg, impostor(tmp_path) as fake:

        async def scenario() -> None:
            settings = _agent(reg, tmp_path, "m1")
            client = RegistryClient.for_settings(settings)
            other = RegistryClient.for_settings(_agent(reg, tmp_path, "m2"))
            try:
                await join_or_load_token(client, settings)
                first = await client.desired("m1", index=0, wait_s=0)
                # A long poll over TLS: held open, then woken by a change (m2 joining).
                watch = asyncio.create_task(client.desired("m1", index=first.index, wait_s=20))
                await asyncio.sleep(0.3)
                assert not watch.done()
                started = time.monotonic()
                await join_or_load_token(other, _agent(reg, tmp_path, "m2"))
                woken = await asyncio.wait_for(watch, timeout=15)
                assert woken.index > first.index and time.monotonic() - started < 10
                # The same wait with nothing changing answers at its end.
                started = time.monotonic()
                quiet = await client.desired("m1", index=woken.index, wait_s=1.0)
                assert quiet.index == woken.index and time.monotonic() - started >= 0.9
            finally:
                await client.aclose()
                await other.aclose()

            for url, pin, seen in (
                (reg.url, WRONG_PIN, reg.fingerprint),
                (fake.url, reg.fingerprint, fake.fingerprint),
            ):
                wrong = _agent(reg, tmp_path, "m3", registry_url=url, registry_fingerprint=pin)
                client = RegistryClient.for_settings(wrong)
                try:
                    with pytest.raises(RegistryCallFailed, match=seen) as caught:
                        await join_or_load_token(client, wrong)
                    assert caught.value.retryable  # an outage to the agent: it keeps serving
                finally:
                    await client.aclose()

        asyncio.run(scenario())
        # The async client stops inside its handshake (before its Finished leaves, so the
        # impostor's side never completes it): it connected, and heard no request.
        assert fake.connections >= 1 and all(data == b"" for data in fake.heard())
        assert not (tmp_path / "m3" / "host-token").exists()

    with pytest.raises(ValueError, match="refusing plain http://"):
        _agent(reg, tmp_path, "m4", registry_url="http://198.18.0.5:8070")


# ---- a real non-loopback bind -------------------------------------------------------------


@pytest.fixture(name="ns_node")
def _ns_node() -> Iterator[object]:
    from tests.system.multihost.net import bridged_network, namespaces_allowed

    if not namespaces_allowed():
        pytest.skip("network namespaces are not allowed here")
    with bridged_network(["registry"]) as network:
        yield network.nodes["registry"]


def test_non_loopback_registry_speaks_only_tls(tmp_path: Path, ns_node: object) -> None:
    node = ns_node
    address = node.address  # type: ignore[attr-defined]
    port = free_port()
    wrap = node.wrap([])  # type: ignore[attr-defined]
    with registry(tmp_path, host=address, wrap=wrap, port=port) as reg:
        assert reg.url == f"https://{address}:{port}"
        served = ssl.get_server_certificate((address, port), timeout=5)
        assert fingerprint_of(ssl.PEM_cert_to_DER_cert(served)) == reg.fingerprint
        assert f"registry fingerprint: {reg.fingerprint}" in reg.log.read_text()
        # Plain HTTP on that port gets no API answer.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{address}:{port}/v1/health", timeout=3)
        env = {"PAAS_CONFIG": str(tmp_path / "cli.json")}
        done = paas("login", "--registry", reg.url, "--token", reg.admin,
                    "--fingerprint", reg.fingerprint, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        done = paas("apps", env={**env, "PAAS_REGISTRY_URL": f"http://{address}:{port}"})
        assert done.returncode != 0 and "refusing plain http://" in done.stderr

    # --insecure-http (behind a TLS-terminating proxy): plain HTTP, said so in the log.
    insecure = ("--insecure-http",)
    with registry(tmp_path, host=address, wrap=wrap, args=insecure, name="plain") as plain:
        assert httpx.get(f"{plain.url}/v1/health", timeout=3).is_success
        assert "--insecure-http" in plain.log.read_text()


def test_a_handshake_that_never_comes_is_cut_at_the_header_timeout(tmp_path: Path) -> None:
    """asyncio would hold a connection that never starts TLS for 60 s, before the edge limits
    see it; the registry gives the handshake its header timeout instead."""
    with registry(tmp_path, tls=True, env={"PAAS_HEADER_TIMEOUT_S": "1"}) as reg:
        port = int(reg.url.rsplit(":", 1)[1])
        silent = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(20)]
        started = time.monotonic()
        try:
            for sock in silent:
                assert sock.recv(1) == b""  # closed by the registry
            held = time.monotonic() - started
        finally:
            for sock in silent:
                sock.close()
        assert held < 5, f"held {held:.1f} s"
        with _pinned(reg) as client:  # and the registry still answers
            assert client.get(f"{reg.url}/v1/health").is_success


def test_a_plain_http_client_handed_an_https_url_trusts_nothing(tmp_path: Path) -> None:
    """`no_tls()` (the context of plain-http clients: an unanchored registry client, health
    checks) loads no CA: a TLS server with a certificate of its own is refused at the
    handshake, and no request byte reaches it."""
    with impostor(tmp_path) as fake, httpx.Client(verify=no_tls(), timeout=5) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(f"{fake.url}/v1/apps")
        assert fake.connections >= 1
        assert all(data == b"" for data in fake.heard())
