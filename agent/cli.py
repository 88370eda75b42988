"""`paas-agent`: one console script for both roles; builds settings, logging and the event loop.

Signal handlers only set an asyncio.Event; the agent's run() notices it and shuts down what
it started (app instances, nginx, HAProxy) before returning.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from agent.errors import AgentError
from agent.settings import AgentSettings, load_settings

log = logging.getLogger("agent")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--role", type=click.Choice(["machine", "frontend"]), default=None)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML file with settings (CLI options and PAAS_* variables override it).",
)
@click.option(
    "--registry-url", default=None, help="Registry URL, or several replicas comma-separated."
)
@click.option("--join-token", default=None, help="Used once; the host token is then kept.")
@click.option("--name", default=None, help="This host's name.")
@click.option("--address", default=None, help="Where others reach this host's proxy.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--proxy-port", type=int, default=None, help="machine: nginx port")
@click.option("--http-port", type=int, default=None, help="frontend: HAProxy HTTP port")
@click.option("--https-port", type=int, default=None, help="frontend: HAProxy HTTPS port")
@click.option("--template-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--port-range", default=None, help="machine: app instance ports, e.g. 20000-29999")
@click.option("--app-uids", default=None, help="machine: uids for the apps, e.g. 70000-79999")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--domain", default=None, help="frontend: cluster domain for the default cert.")
@click.option("--nginx-bin", default=None)
@click.option("--haproxy-bin", default=None)
@click.option("--api-port", type=int, default=None, help="machine: agent API port; 0 = any")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Render the saved state with this host's templates (frontend: routing table ->"
    " HAProxy; machine: desired state -> nginx), validate it with the real binary and print"
    " the diff against the live config; changes nothing.",
)
def main(config_file: Path | None, verbose: bool, dry_run: bool, **options: object) -> None:
    """Run a machine or frontend agent until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = load_settings(config_file, **options)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc
    if dry_run:
        _dry_run(settings)
        return
    try:
        asyncio.run(_run(settings))
    except AgentError as exc:
        raise click.ClickException(str(exc)) from exc


def _dry_run(settings: AgentSettings) -> None:
    from agent.dryrun import frontend_dry_run, machine_dry_run

    try:
        if settings.role == "frontend":
            result = frontend_dry_run(settings)
        else:
            result = machine_dry_run(settings)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(result.report, nl=False)
    if not result.ok:
        sys.exit(1)


async def _run(settings: AgentSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("starting %s agent %r (state in %s)", settings.role, settings.name, settings.state_dir)
    if settings.role == "machine":
        from agent.machine.agent import MachineAgent

        await MachineAgent(settings).run(stop)
    else:
        from agent.frontend.agent import FrontendAgent

        await FrontendAgent(settings).run(stop)
    log.info("%s agent %r stopped", settings.role, settings.name)


if __name__ == "__main__":
    main()
