"""`paas data:export APP > data.tar.gz` and `paas data:import APP < data.tar.gz`: the app's
data folder (PAAS_DATA_DIR) on the host that holds it, through the registry.

Export writes the tar.gz to stdout as it arrives (refused when stdout is a terminal);
import reads stdin (at most MAX_IMPORT_BYTES) and replaces the folder's contents once the
archive unpacked completely on the host.
"""

from __future__ import annotations

import sys

import click

from cli.api import RegistryClient
from cli.errors import CliError
from common.names import check_app_name

MAX_IMPORT_BYTES = 256 << 20  # the registry's and the agent's bound too


def register(group: click.Group) -> None:
    @group.command("data:export")
    @click.argument("app")
    def data_export(app: str) -> None:
        """Write APP's data folder as a tar.gz to stdout: paas data:export APP > data.tar.gz"""
        check_app_name(app)
        out = sys.stdout.buffer
        if out.isatty():
            raise CliError("stdout is a terminal; redirect it: paas data:export APP > data.tar.gz")
        size = 0
        with RegistryClient.from_login() as api, api.export_data(app) as (host, chunks):
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
        out.flush()
        click.echo(f"exported {size} bytes of {app}'s data from host {host}", err=True)

    @group.command("data:import")
    @click.argument("app")
    def data_import(app: str) -> None:
        """Replace APP's data folder with a tar.gz from stdin: paas data:import APP < data.tar.gz"""
        check_app_name(app)
        source = sys.stdin.buffer
        if source.isatty():
            raise CliError("stdin is a terminal; redirect it: paas data:import APP < data.tar.gz")
        body = source.read(MAX_IMPORT_BYTES + 1)
        if len(body) > MAX_IMPORT_BYTES:
            raise CliError(f"the archive is larger than {MAX_IMPORT_BYTES >> 20} MiB")
        with RegistryClient.from_login() as api:
            result = api.import_data(app, body)
        click.echo(f"imported {result.bytes} bytes into {app}'s data on host {result.host}")
