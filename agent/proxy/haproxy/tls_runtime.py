"""Certificates and ACME answers changed through HAProxy's runtime API instead of a reload.

A renewed certificate, a deleted one, or an http-01 answer coming and going must not cost a
reload: `plan` (pure) says what differs between the live view and the new one in just those
two parts, and `apply` sends the commands on the worker's admin socket: a new certificate is
created, filled and committed, then added to the crt-list before the one it replaces leaves
it (so some certificate always answers for its names); challenge answers are map entries.
The caller still validates and writes the files, so a later reload serves the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from agent.errors import ProxyError
from agent.proxy.haproxy.runtime import admin_command
from agent.proxy.haproxy.view import CertView, HaproxyView

log = logging.getLogger(__name__)

CLI_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class TlsChange:
    add_certs: tuple[CertView, ...] = ()  # not served yet (a new file)
    refill_certs: tuple[CertView, ...] = ()  # same file, new contents
    relist_certs: tuple[CertView, ...] = ()  # same file, other SNI names
    remove_certs: tuple[CertView, ...] = ()
    add_challenges: tuple[tuple[str, str], ...] = ()
    remove_challenges: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in self.__dataclass_fields__)


def plan(live: HaproxyView, new: HaproxyView) -> TlsChange | None:
    """What turns `live` into `new` when only certificates and challenge answers differ;
    None when nothing there changed (nothing for us to do)."""
    if (live.cert_list, live.challenge_map) != (new.cert_list, new.challenge_map):
        return None
    old_certs = {c.file: c for c in live.certs}
    new_certs = {c.file: c for c in new.certs}
    change = TlsChange(
        add_certs=tuple(c for f, c in new_certs.items() if f not in old_certs),
        refill_certs=tuple(
            c for f, c in new_certs.items() if f in old_certs and old_certs[f].pem != c.pem
        ),
        relist_certs=tuple(
            c for f, c in new_certs.items() if f in old_certs and old_certs[f].sni != c.sni
        ),
        remove_certs=tuple(c for f, c in old_certs.items() if f not in new_certs),
        add_challenges=tuple(sorted(set(new.challenges) - set(live.challenges))),
        remove_challenges=tuple(sorted(set(live.challenges) - set(new.challenges))),
    )
    return change or None


def with_tls_of(live: HaproxyView, new: HaproxyView) -> HaproxyView:
    """`live` as it is once `plan(live, new)` was applied."""
    return replace(live, certs=new.certs, challenges=new.challenges)


def apply(admin_socket: Path, change: TlsChange, view: HaproxyView) -> None:
    """Send the commands for `change`; ProxyError at the first one HAProxy refuses (the
    caller then reloads, which makes the worker match the files whatever happened here)."""
    cli = _Cli(admin_socket)
    for cert in change.add_certs:
        cli.expect(f"new ssl cert {cert.file}", "New empty certificate store")
        _fill(cli, cert)
        cli.expect(f"add ssl crt-list {view.cert_list} <<\n{_crt_list_line(cert)}\n", "Success!")
    for cert in change.refill_certs:
        _fill(cli, cert)
    for cert in change.relist_certs:
        cli.expect(f"del ssl crt-list {view.cert_list} {cert.file}", "deleted in crtlist")
        cli.expect(f"add ssl crt-list {view.cert_list} <<\n{_crt_list_line(cert)}\n", "Success!")
    for cert in change.remove_certs:
        cli.expect(f"del ssl crt-list {view.cert_list} {cert.file}", "deleted in crtlist")
        cli.expect(f"del ssl cert {cert.file}", "deleted!")
    for token, key_authorization in change.add_challenges:
        cli.expect_empty(f"add map {view.challenge_map} {token} {key_authorization}")
    for token, _ in change.remove_challenges:
        cli.expect_empty(f"del map {view.challenge_map} {token}")


def _fill(cli: _Cli, cert: CertView) -> None:
    cli.expect(f"set ssl cert {cert.file} <<\n{cert.pem}", "Transaction")
    cli.expect(f"commit ssl cert {cert.file}", "Success!")


def _crt_list_line(cert: CertView) -> str:
    return f"{cert.file} {' '.join(cert.sni)}"


class _Cli:
    """One admin-socket connection per command (HAProxy closes it after answering)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, command: str) -> str:
        return admin_command(self.path, command, timeout_s=CLI_TIMEOUT_S)

    def expect(self, command: str, marker: str) -> None:
        answer = self.send(command)
        if marker not in answer:
            raise ProxyError(f"HAProxy refused {_first_line(command)!r}: {answer[:500]}")

    def expect_empty(self, command: str) -> None:
        answer = self.send(command)
        if answer:
            raise ProxyError(f"HAProxy refused {_first_line(command)!r}: {answer[:500]}")


def _first_line(command: str) -> str:
    return command.split("\n", 1)[0]  # never the payload: it holds a private key
