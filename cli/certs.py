"""`paas certs`, `paas certs:add`, `paas certs:remove`: an app's TLS certificates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli import output
from cli.api import RegistryClient
from cli.errors import CliError
from common.names import check_app_name, check_sha256
from common.pem import MAX_PEM_BYTES, BadCertificate, check_bundle


def _read(path: Path, what: str) -> str:
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

    @group.command("certs:add")
    @click.argument("app")
    @click.option("--cert", "cert_file", required=True, type=click.Path(path_type=Path))
    @click.option("--key", "key_file", required=True, type=click.Path(path_type=Path))
    def certs_add(app: str, cert_file: Path, key_file: Path) -> None:
        """Serve a certificate (PEM chain, leaf first) and its key for APP's domains."""
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
