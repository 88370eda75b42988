"""`paas-agent --role frontend|machine --dry-run`: render the current state with this host's
templates, validate it with the real binary (HAProxy or nginx), and show the diff against the
live config.

Changes nothing: it renders into a temporary copy of the live config folder, so an operator
can check an edited template (in the host's template folder) before the agent applies it.
The frontend renders the routing table the agent saved last (state_dir/routing.json); the
machine renders its saved desired state (state_dir/desired.json) with the instances whose
processes still run (their run records) as the healthy ones. Certificate files are named in
the diff, never printed (they hold private keys).
"""

from __future__ import annotations

import asyncio
import difflib
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.errors import RenderError, ValidationFailed
from agent.frontend.agent import FrontendAgent, worker_identity
from agent.link import statefile
from agent.machine.instances import load_desired
from agent.machine.run.runrecords import adoptable, read_records
from agent.proxy.config_apply import _with_offending_lines
from agent.proxy.haproxy.view import CERT_DIR, MAIN_FILE, build_view, render_files
from agent.proxy.nginx import view as nginx
from agent.proxy.nginx.process import NginxProcess, default_worker_user
from agent.proxy.render import make_environment, template_dirs
from agent.settings import AgentSettings
from common.wire import RoutingTable


@dataclass(frozen=True)
class DryRun:
    ok: bool  # rendered and validated
    report: str  # the diff, then the verdict


def frontend_dry_run(settings: AgentSettings) -> DryRun:
    agent = FrontendAgent(settings)
    try:
        return _dry_run(agent, settings)
    finally:
        asyncio.run(agent.client.aclose())


def _dry_run(agent: FrontendAgent, settings: AgentSettings) -> DryRun:
    table = statefile.load(agent.routing_file, RoutingTable) or RoutingTable(index=0, apps=[])
    cert = settings.tls_cert or settings.state_dir / "tls" / "default.pem"
    lines = [f"routing index {table.index} ({len(table.apps)} apps) from {agent.routing_file}"]
    try:
        built = build_view(
            table,
            bind_address=settings.address,
            http_port=settings.http_port,
            https_port=settings.https_port,
            cert_path=cert,
            admin_socket=agent.admin_socket,
            run_as=worker_identity(),
        )
        files = render_files(agent.env, built.view)
    except RenderError as exc:
        lines.append(f"render failed: {exc}")
        return DryRun(ok=False, report="\n".join(lines) + "\n")
    lines += [f"warning: {error}" for error in built.errors]
    return _check(
        lines, agent.conf_dir, files, MAIN_FILE, agent.process.validate, tool="haproxy -c"
    )


def machine_dry_run(settings: AgentSettings) -> DryRun:
    """The nginx config this machine would render now, checked with `nginx -t`."""
    desired = load_desired(settings.state_dir)
    process = NginxProcess(
        settings.state_dir / "nginx", binary=settings.nginx_bin, worker_user=default_worker_user()
    )
    saved = settings.state_dir / "desired.json"
    instances = list(desired.instances) if desired else []
    healthy = {
        record.instance.id: record.port
        for record in read_records(settings.state_dir / "run")
        if record.port is not None and adoptable(record) is not None  # workers have no port
    }
    lines = [
        f"desired index {desired.index if desired else 0} ({len(instances)} instances,"
        f" {len(healthy)} running) from {saved}"
    ]
    try:
        view = nginx.build_view(
            instances,
            healthy,
            address=settings.address,
            port=settings.proxy_port,
            paths=process.paths(),
            worker_user=process.worker_user,
            services=desired.services if desired else (),
        )
        env = make_environment(template_dirs(settings.operator_template_dir))
        files = nginx.render_files(env, view)
    except RenderError as exc:
        lines.append(f"render failed: {exc}")
        return DryRun(ok=False, report="\n".join(lines) + "\n")
    return _check(
        lines, process.conf_dir, files, nginx.MAIN_FILE, process.validate, tool="nginx -t"
    )


def _check(
    lines: list[str],
    live_dir: Path,
    files: Mapping[str, str],
    main_file: str,
    validate: Callable[[Path], None],
    *,
    tool: str,
) -> DryRun:
    """The diff, then the verdict of the real binary on a temporary copy of the live folder."""
    lines.append(_diff(live_dir, dict(files)))
    with tempfile.TemporaryDirectory(prefix="paas-dry-run-") as folder:
        staged = Path(folder) / "conf"
        if live_dir.is_dir():
            shutil.copytree(live_dir, staged, symlinks=True)
        for name, text in files.items():
            path = staged / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        try:
            validate(staged / main_file)
        except ValidationFailed as exc:
            message = _with_offending_lines(str(exc), staged)
            lines.append(f"validation FAILED (the live config stays as it is):\n{message}")
            return DryRun(ok=False, report="\n".join(lines) + "\n")
    lines.append(f"validation ok ({tool}); nothing was changed")
    return DryRun(ok=True, report="\n".join(lines) + "\n")


def _diff(live_dir: Path, files: dict[str, str]) -> str:
    out: list[str] = []
    for name in sorted(files):
        live_path = live_dir / name
        live = live_path.read_text() if live_path.is_file() else None
        if live == files[name]:
            continue
        if name.startswith(f"{CERT_DIR}/"):
            out.append(f"{'changed' if live is not None else 'new'} certificate file {name}")
            continue
        out.extend(
            difflib.unified_diff(
                (live or "").splitlines(keepends=True),
                files[name].splitlines(keepends=True),
                fromfile=f"live/{name}" if live is not None else "/dev/null",
                tofile=f"rendered/{name}",
            )
        )
    text = "".join(line if line.endswith("\n") else line + "\n" for line in out)
    return text.rstrip("\n") if text else "no differences from the live config"
