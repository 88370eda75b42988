"""`paas certs`, `paas certs:add`, `paas certs:remove`: an app's TLS certificates; and
`paas certs:auto`, `paas certs:auto:remove`: certificates the registry gets and renews by ACME."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli import output
from cli.api import RegistryClient
from cli.errors import CliError
from common.names import check_app_name, check_domain, check_sha256
from common.wire import AcmeStatus


def _read(path: Path, what: str) -> str:
    from common.pem import MAX_PEM_BYTES  # common.pem loads cryptography: only for certs:add

    try:
        if path.stat().st_size > MAX_PEM_BYTES:
            raise CliError(f"{what} file {path} is larger than {MAX_PEM_BYTES} bytes")
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the {what} file {path}: {exc}") from exc


def register(
    group: click.Group,
    *,
    client: Callable[[], RegistryClient],
    json_option: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Add the certificate verbs to the `paas` group."""

    @group.command("certs")
    @click.argument("app")
    @json_option
    def certs(app: str, as_json: bool) -> None:
        """List the certificates of APP."""
        check_app_name(app)
        with client() as api:
            found = api.list_certs(app)
            automatic = api.list_acme(app)
        if as_json:
            output.print_json(found)
            return
        output.table(
            None,
            ["SHA256", "SOURCE", "NAMES", "SERVED FOR", "EXPIRES"],
            [
                [c.sha256[:12], c.source, " ".join(c.names), " ".join(c.covers), c.not_after]
                for c in found
            ],
        )
        if automatic:
            _acme_table(automatic)

    @group.command("certs:auto")
    @click.argument("app")
    @click.argument("domain", required=False)
    @json_option
    def certs_auto(app: str, domain: str | None, as_json: bool) -> None:
        """Get a certificate for DOMAIN of APP by ACME and renew it automatically; without
        DOMAIN, show how each ACME domain of APP is doing."""
        check_app_name(app)
        with client() as api:
            if domain is None:
                found = api.list_acme(app)
            else:
                check_domain(domain)
                found = [api.add_acme(app, domain)]
        if as_json:
            output.print_json(found)
        elif domain is None:
            _acme_table(found)
        else:
            click.echo(
                f"{domain} of {app} gets its certificate by ACME ({found[0].state});"
                f" `paas certs {app}` shows progress"
            )

    @group.command("certs:auto:remove")
    @click.argument("app")
    @click.argument("domain")
    def certs_auto_remove(app: str, domain: str) -> None:
        """Stop renewing DOMAIN by ACME (its current certificate stays until certs:remove)."""
        check_app_name(app)
        check_domain(domain)
        with client() as api:
            api.remove_acme(app, domain)
        click.echo(f"{domain} of {app} is no longer renewed by ACME")

    @group.command("certs:add")
    @click.argument("app")
    @click.option("--cert", "cert_file", required=True, type=click.Path(path_type=Path))
    @click.option("--key", "key_file", required=True, type=click.Path(path_type=Path))
    def certs_add(app: str, cert_file: Path, key_file: Path) -> None:
        """Serve a certificate (PEM chain, leaf first) and its key for APP's domains."""
        from common.pem import BadCertificate, check_bundle

        check_app_name(app)
        cert_pem, key_pem = _read(cert_file, "certificate"), _read(key_file, "key")
        with client() as api:
            found = api.get_app(app)
            domains = [u.split("/")[2].rsplit(":", 1)[0] for u in found.urls]
            try:  # the registry checks again; this only gives the error before the upload
                check_bundle(cert_pem, key_pem, domains=domains, now=dt.datetime.now(dt.UTC))
            except BadCertificate as exc:
                raise CliError(f"certificate refused: {exc}") from exc
            cert = api.add_cert(app, cert_pem, key_pem)
        click.echo(
            f"added certificate {cert.sha256[:12]} to {app}: served for {', '.join(cert.covers)}"
            f" until {cert.not_after:%Y-%m-%d}"
        )

    @group.command("certs:remove")
    @click.argument("app")
    @click.argument("sha256")
    def certs_remove(app: str, sha256: str) -> None:
        """Stop serving the certificate SHA256 (full hash, from `paas certs --json`)."""
        check_app_name(app)
        check_sha256(sha256)
        with client() as api:
            api.remove_cert(app, sha256)
        click.echo(f"removed certificate {sha256[:12]} from {app}")


def _acme_table(found: list[AcmeStatus]) -> None:
    output.table(
        "ACME",
        ["DOMAIN", "STATE", "SHA256", "EXPIRES", "RENEWS AFTER", "FAILURES", "NEXT TRY", "ERROR"],
        [
            [
                a.domain,
                a.state,
                a.cert_sha256[:12] if a.cert_sha256 else None,
                a.not_after,
                a.renew_after,
                a.attempts,
                a.next_attempt_at,
                a.last_error,
            ]
            for a in found
        ],
    )
