"""`paas`: the command line. Each verb is a thin shell over cli.api / deploy / local."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli import (
    audit,
    certs,
    config,
    config_verbs,
    data,
    domains,
    hosts_verbs,
    logs,
    output,
    ps,
    routing,
    run,
    tokens,
)
from cli.api import RegistryClient
from cli.deploy import Deployer
from cli.errors import ApiError, CliError, DeployFailed
from common.names import InvalidName, check_app_name, check_domain
from common.wire import AppCreate


class PaasGroup(click.Group):
    """Turns every expected error into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DeployFailed as exc:
            click.echo(str(exc), err=True)  # "failed: <reason>", may span lines
            ctx.exit(exc.exit_code)
        except (CliError, InvalidName) as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(getattr(exc, "exit_code", 1))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--json` after the verb too; `paas --json apps` and `paas apps --json` both work."""

    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.pass_context
    @functools.wraps(fn)
    def wrapper(ctx: click.Context, *args: Any, as_json: bool, **kwargs: Any) -> Any:
        root = ctx.find_root().obj or {}
        return ctx.invoke(fn, *args, as_json=as_json or root.get("json", False), **kwargs)

    return wrapper


def client() -> RegistryClient:
    return RegistryClient.from_login()


@click.group(cls=PaasGroup)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for listings and status.")
@click.pass_context
def main(ctx: click.Context, as_json: bool) -> None:
    """paas: deploy apps to your own hosts; they answer on https://<app>.<domain>/."""
    ctx.obj = {"json": as_json}


@main.command()
@click.option(
    "--registry",
    "registry_url",
    required=True,
    help="Registry URL, or several replicas comma-separated (the CLI fails over).",
)
@click.option("--token", required=True, help="Admin token from `paas-registry init`.")
@click.option(
    "--fingerprint",
    default=None,
    help="sha256:... of the registry's certificate (`paas-registry fingerprint`);"
    " comma-separated for replicas with their own certificates.",
)
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(dir_okay=False, exists=True, resolve_path=True),
    default=None,
    help="CA file that signed the registry's certificate (instead of --fingerprint).",
)
def login(registry_url: str, token: str, fingerprint: str | None, ca_file: str | None) -> None:
    """Check a token against the registry (an https:// one proven by --fingerprint or --ca),
    then save all of it."""
    trust = config.Login(
        registry_url=registry_url, token=token, registry_fingerprint=fingerprint
    ).trust()  # a malformed pin -> one clear line
    saved = config.Login(
        registry_url=registry_url.rstrip("/"),
        token=token,
        registry_fingerprint=",".join(trust.pins) or None,
        registry_ca=ca_file,
    )
    with RegistryClient(registry_url, token, trust=saved.trust()) as api:
        try:
            api.list_apps()  # 401 -> "refused the token"; unreachable -> one clear line
        except ApiError as exc:
            if exc.status != 403:  # 403: a deploy-scoped token, valid for its one app
                raise
    path = config.config_path()
    config.save(saved, path)
    click.echo(f"logged in to {registry_url}; saved in {path}")


@main.command()
@json_option
def apps(as_json: bool) -> None:
    """List apps."""
    with client() as api:
        found = api.list_apps()
    output.print_json(found) if as_json else output.apps_table(found)


@main.command("apps:create")
@click.argument("name")
@click.option("--domain", "domains", multiple=True, help="Extra domain (repeatable).")
@click.option("--instances", type=click.IntRange(0, 100), default=1, show_default=True)
@json_option
def apps_create(name: str, domains: tuple[str, ...], instances: int, as_json: bool) -> None:
    """Create an app."""
    check_app_name(name)
    for domain in domains:
        check_domain(domain)
    spec = AppCreate(name=name, domains=list(domains), instances=instances)
    with client() as api:
        app = api.create_app(spec)
    if as_json:
        output.print_json(app)
    else:
        click.echo(f"created app {app.name}: {', '.join(app.urls)}")


@main.command("apps:delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Really delete the app, its releases and instances.")
@click.option("--force", is_flag=True, help="Delete even if other apps depend on it.")
@click.option(
    "--delete-data",
    is_flag=True,
    help="Also remove its data folders (PAAS_DATA_DIR) on every host; kept aside otherwise.",
)
def apps_delete(name: str, yes: bool, force: bool, delete_data: bool) -> None:
    """Delete an app (needs --yes). Its data stays on the hosts, out of reach of any new app
    of the same name, unless --delete-data."""
    check_app_name(name)
    if not yes:
        raise CliError(f"deleting {name} stops it and removes its releases; add --yes to confirm")
    if delete_data:
        with client() as api:
            answer = api.delete_app_and_data(name, force=force)
        click.echo(f"deleted app {name}")
        for host, outcome in sorted(answer.data.items()):
            click.echo(f"  data on {host}: {outcome}")
        return
    with client() as api:
        api.force_delete_app(name) if force else api.delete_app(name)
    click.echo(f"deleted app {name}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path), default=".")
@click.option("--app", "app_name", help="App name (default: paas.toml name, else folder name).")
@click.option("--timeout", type=click.FloatRange(1), default=600.0, show_default=True)
@click.option("--plan", is_flag=True, help="Show the env diff the deploy would make; no change.")
@json_option
def deploy(path: Path, app_name: str | None, timeout: float, plan: bool, as_json: bool) -> None:
    """Pack PATH, upload it, release it and follow the release until it serves."""
    report = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    if plan:
        from cli.plan import deploy_plan

        with client() as api:
            for line in deploy_plan(api, path, app=app_name):
                click.echo(line)
        return
    with client() as api:
        result = Deployer(api, report).run(path, app=app_name, timeout=timeout)
    if as_json:
        output.print_json(result.release)


@main.command()
@click.argument("app")
@click.argument("version", required=False, type=click.IntRange(1))
@click.option("--timeout", type=click.FloatRange(1), default=600.0, show_default=True)
@json_option
def rollback(app: str, version: int | None, timeout: float, as_json: bool) -> None:
    """Deploy the code and config of VERSION again, as a new release.

    VERSION defaults to the release before the active one. The new release goes through the
    same health check as a deploy; the previous one serves until it passes.
    """
    check_app_name(app)
    report = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    with client() as api:
        result = Deployer(api, report).rollback(app, version=version, timeout=timeout)
    if as_json:
        output.print_json(result.release)


@main.command()
@click.argument("app", required=False)
@json_option
def status(app: str | None, as_json: bool) -> None:
    """Cluster overview, or one app with its instances."""
    with client() as api:
        if app is None:
            apps_, hosts_ = api.list_apps(), api.list_hosts()
            if as_json:
                output.print_json({"apps": apps_, "hosts": hosts_})
                return
            output.apps_table(apps_)
            click.echo()
            output.hosts_table(hosts_)
            return
        check_app_name(app)
        found = api.get_app(app)
        releases = api.list_releases(app)
        instances = api.list_instances(app)
    active = next((r for r in releases if r.version == found.active_release), None)
    # The newest release when it is not the active one: a deploy in progress or one that
    # failed (with its reason), which the active release keeps serving through.
    latest = releases[0] if releases and releases[0] is not active else None
    if as_json:
        output.print_json(
            {"app": found, "release": active, "latest": latest, "instances": instances}
        )
        return
    output.app_detail(found, active, latest)
    output.instances_table(instances)


@main.command()
@click.argument("app")
@click.argument("version", required=False, type=click.IntRange(1))
@json_option
def releases(app: str, version: int | None, as_json: bool) -> None:
    """List an app's releases, newest first; with VERSION, that one in full (why it failed
    or was rolled back, its release phase's output)."""
    check_app_name(app)
    with client() as api:
        if version is not None:
            one, _index = api.watch_release(app, version)
            output.print_json(one) if as_json else output.release_detail(one)
            return
        found = api.list_releases(app)
    output.print_json(found) if as_json else output.releases_table(found)


@main.command()
@json_option
def hosts(as_json: bool) -> None:
    """List machine and frontend hosts."""
    with client() as api:
        found = api.list_hosts()
    output.print_json(found) if as_json else output.hosts_table(found)


# ---- local cluster ---------------------------------------------------------------------


@main.group()
def local() -> None:
    """Run a whole cluster on this machine (127.0.0.1)."""


STATE_OPTION = click.option(
    "--state-dir", type=click.Path(path_type=Path), default=Path(".paas-local"), show_default=True
)


class LowHigh(click.ParamType):
    """LOW-HIGH, e.g. 20000-20999 (ports) or 80000-80999 (uids): bounds within [least, most]."""

    name = "LOW-HIGH"

    def __init__(
        self,
        least: int = 1024,
        most: int = 65535,
        what: str = "ports",
        example: str = "20000-20999",
    ) -> None:
        self.least, self.most, self.what, self.example = least, most, what, example

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            low, high = (int(part) for part in str(value).split("-"))
        except ValueError:
            self.fail(f"{value!r} is not LOW-HIGH, e.g. {self.example}", param, ctx)
        if not self.least <= low <= high <= self.most:
            self.fail(
                f"{value!r} must be two {self.what} within {self.least}-{self.most}, low first",
                param,
                ctx,
            )
        return low, high


def _port_option(name: str, default: int, what: str) -> Callable[[Any], Any]:
    return click.option(
        name,
        type=click.IntRange(1, 65535),
        default=None,
        help=f"{what} [default: the last one used here, else {default}]",
    )


@local.command("up")
@STATE_OPTION
@_port_option("--registry-port", 8070, "Registry API port.")
@_port_option("--http-port", 8080, "Frontend HTTP port.")
@_port_option("--https-port", 8443, "Frontend HTTPS port.")
@_port_option("--proxy-port", 8081, "Machine proxy (nginx) port.")
@_port_option("--agent-api-port", 8071, "Machine agent API port (logs, runs, metrics).")
@click.option(
    "--app-ports", type=LowHigh(), default=None, help="App instance ports [default: free ones]."
)
@click.option(
    "--service-ports", type=LowHigh(), default=None, help="Service ports [default: free ones]."
)
@click.option(
    "--app-uids",
    type=LowHigh(10000, 2147483646, "uids", "80000-80999"),
    default=None,
    help="Uids for the apps, one each [default: a block no running cluster uses].",
)
@click.option("--domain", default=None, help="Cluster domain [default: localhost].")
@click.option(
    "--app-dir", type=click.Path(path_type=Path), default=Path("examples/hello"), show_default=True
)
@click.option("--no-deploy", is_flag=True, help="Start the cluster only.")
@click.option("--deploy-timeout", type=click.FloatRange(1), default=600.0, show_default=True)
def local_up(
    state_dir: Path,
    registry_port: int | None,
    http_port: int | None,
    https_port: int | None,
    proxy_port: int | None,
    agent_api_port: int | None,
    app_ports: tuple[int, int] | None,
    service_ports: tuple[int, int] | None,
    app_uids: tuple[int, int] | None,
    domain: str | None,
    app_dir: Path,
    no_deploy: bool,
    deploy_timeout: float,
) -> None:
    """Start what is not running of registry + machine agent + frontend agent (restarted
    agents adopt their nginx, HAProxy and apps), log in, deploy the app dir."""
    if domain is not None:
        check_domain(domain)
    import dataclasses

    from cli.local import LocalCluster  # psutil and friends only for `local`

    chosen = {
        "registry": registry_port,
        "http": http_port,
        "https": https_port,
        "proxy": proxy_port,
        "agent_api": agent_api_port,
    }
    cluster = LocalCluster(
        state_dir,
        domain=domain,
        service_ports=service_ports,
        app_ports=app_ports,
        app_uids=app_uids,
    )
    picked = {k: v for k, v in chosen.items() if v is not None}
    if picked and not cluster.running():  # a running cluster keeps its ports
        cluster.ports = dataclasses.replace(cluster.ports, **picked)
    report = cluster.up()
    components = cluster.components(report.found)
    if report.found:
        click.echo(f"found running: {', '.join(m.describe() for m in report.found)}")
    for note in report.notes:
        click.echo(note)
    if report:
        click.echo(f"started {', '.join(report.started)} (logs in {cluster.logs_dir})")
        adopted = [m.describe() for m in report.found if m.role not in components]
        if adopted:
            click.echo(f"the agents adopt what was left running: {', '.join(adopted)}")
    else:
        click.echo(f"a local cluster from {cluster.state_dir} is already running")
    path = config.config_path()
    config.save(cluster.login(), path)
    click.echo(f"logged in to {cluster.registry_url} (saved in {path})")
    if no_deploy:
        return
    with cluster.client() as api:
        Deployer(api, click.echo).run(app_dir, timeout=deploy_timeout)  # ends with the app's URL


@local.command("down")
@STATE_OPTION
def local_down(state_dir: Path) -> None:
    """Stop every process of the cluster: agents first (gracefully), then the registry, then
    whatever a killed agent left running (nginx, HAProxy, apps)."""
    from cli.local import LocalCluster

    stopped = LocalCluster(state_dir).down()
    if stopped:
        click.echo(f"stopped {', '.join(m.describe() for m in stopped)}")
    else:
        click.echo("nothing was running")


@local.command("status")
@STATE_OPTION
@json_option
def local_status(state_dir: Path, as_json: bool) -> None:
    """Each component alive or dead, the cluster's other processes (orphans: their agent is
    not running), and what the registry says about the hosts."""
    from cli.local import LocalCluster

    cluster = LocalCluster(state_dir)
    info = cluster.status()
    hosts_: list[Any] = []
    if any(p["alive"] and n == "registry" for n, p in info["processes"].items()):
        try:
            with cluster.client() as api:
                hosts_ = api.list_hosts()
        except CliError as exc:
            info["registry_error"] = str(exc)
    if as_json:
        output.print_json({**info, "hosts": hosts_})
        return
    if not info["processes"]:
        click.echo(f"no local cluster recorded in {cluster.state_dir}")
        return
    rows = [
        [n, p["pid"] or "-", "alive" if p["alive"] else "dead"]
        for n, p in info["processes"].items()
    ]
    rows += [
        [o["role"], o["pid"], f"orphan ({o['owner']} is not running)" if o["orphan"] else "alive"]
        for o in info["others"]
    ]
    output.table(None, ["PROCESS", "PID", "STATE"], rows)
    if hosts_:
        click.echo()
        output.hosts_table(hosts_)


domains.register(main, client=client, json_option=json_option)
certs.register(main, client=client, json_option=json_option)
routing.register(main, client=client, json_option=json_option)
ps.register(main, client=client, json_option=json_option)
config_verbs.register(main, client=client, json_option=json_option)
tokens.register(main, json_option=json_option)
hosts_verbs.register(main)
audit.register(main, json_option=json_option)
logs.register(main)
run.register(main)
data.register(main)

if __name__ == "__main__":
    sys.exit(main())
