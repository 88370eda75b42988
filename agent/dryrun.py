"""`paas-agent --role frontend --dry-run`: render the current routing with this host's
templates, validate it with the real HAProxy, and show the diff against the live config.

Changes nothing: it renders into a temporary copy of the live config folder, so an operator
can check an edited template (in the host's template folder) before the agent applies it.
The routing rendered is the one the agent saved last (state_dir/routing.json). Certificate
files are named in the diff, never printed (they hold private keys).
"""

from __future__ import annotations

import asyncio
import difflib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent import statefile
from agent.config_apply import _with_offending_lines
from agent.errors import RenderError, ValidationFailed
from agent.frontend import FrontendAgent, worker_identity
from agent.haproxy import CERT_DIR, MAIN_FILE, build_view, render_files
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
    lines.append(_diff(agent.conf_dir, files))
    with tempfile.TemporaryDirectory(prefix="paas-dry-run-") as folder:
        staged = Path(folder) / "conf"
        if agent.conf_dir.is_dir():
            shutil.copytree(agent.conf_dir, staged, symlinks=True)
        for name, text in files.items():
            path = staged / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        try:
            agent.process.validate(staged / MAIN_FILE)
        except ValidationFailed as exc:
            message = _with_offending_lines(str(exc), staged)
            lines.append(f"validation FAILED (the live config stays as it is):\n{message}")
            return DryRun(ok=False, report="\n".join(lines) + "\n")
    lines.append("validation ok (haproxy -c); nothing was changed")
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
