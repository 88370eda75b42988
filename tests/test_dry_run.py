"""`paas-agent --role frontend --dry-run`: the diff of an edited host template against the
live config, validated with the real HAProxy; a broken template shows the error, exits 1 and
leaves the live config untouched."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent import statefile
from agent.cli import main
from agent.dryrun import frontend_dry_run
from agent.frontend import FrontendAgent, worker_identity
from agent.haproxy import build_view, render_files
from agent.render import default_template_dir
from agent.settings import AgentSettings
from agent.tls import ensure_default_cert
from common.wire import RouteApp, RouteServer, RoutingTable
from tests.conftest import free_ports

TABLE = RoutingTable(
    index=7,
    apps=[
        RouteApp(
            name="hello",
            domains=["hello.paas.test", "*.hello.example.com"],
            servers=[RouteServer(host="m1", address="127.0.0.1", port=8081)],
        )
    ],
)


@pytest.fixture
def settings(tmp_path: Path) -> AgentSettings:
    http_port, https_port = free_ports(2)
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "templates").mkdir()
    ensure_default_cert(state, "paas.test", now=dt.datetime.now(dt.UTC))
    statefile.save(state / "routing.json", TABLE)
    return AgentSettings(
        role="frontend",
        registry_url="http://127.0.0.1:9",
        name="f1",
        state_dir=state,
        http_port=http_port,
        https_port=https_port,
        template_dir=tmp_path / "templates",
    )


def make_live(settings: AgentSettings) -> Path:
    """The live folder as the agent would have left it after applying TABLE."""
    first = frontend_dry_run(settings)
    assert first.ok, first.report
    assert "+++ rendered/haproxy.cfg" in first.report and "app_hello" in first.report
    agent = FrontendAgent(settings)
    staged = Path(settings.state_dir) / "haproxy" / "conf"
    staged.mkdir(parents=True, exist_ok=True)
    built = build_view(
        TABLE,
        bind_address=settings.address,
        http_port=settings.http_port,
        https_port=settings.https_port,
        cert_path=settings.state_dir / "tls" / "default.pem",
        admin_socket=agent.admin_socket,
        run_as=worker_identity(),
    )
    for name, text in render_files(agent.env, built.view).items():
        (staged / name).write_text(text)
    return staged


def edit_template(settings: AgentSettings, old: str, new: str) -> None:
    assert settings.template_dir is not None
    text = (default_template_dir() / "haproxy.cfg.j2").read_text()
    assert old in text
    (settings.template_dir / "haproxy.cfg.j2").write_text(text.replace(old, new))


def test_edited_template_shows_its_diff_and_changes_nothing(settings: AgentSettings) -> None:
    live = make_live(settings)
    before = {p.name: p.read_text() for p in live.iterdir()}
    assert "no differences from the live config" in frontend_dry_run(settings).report

    edit_template(settings, "timeout client 60s", "timeout client 90s")
    result = frontend_dry_run(settings)
    assert result.ok, result.report
    assert "-    timeout client 60s\n+    timeout client 90s" in result.report
    assert "validation ok" in result.report
    assert {p.name: p.read_text() for p in live.iterdir()} == before


def test_broken_template_shows_the_error_and_exits_1(settings: AgentSettings) -> None:
    live = make_live(settings)
    before = {p.name: p.read_text() for p in live.iterdir()}
    edit_template(settings, "option dontlognull", "option dontlognull\n    bogus-keyword on")
    result = frontend_dry_run(settings)
    assert not result.ok
    assert "+    bogus-keyword on" in result.report
    assert "validation FAILED" in result.report and "> " in result.report
    assert {p.name: p.read_text() for p in live.iterdir()} == before

    args = [
        "--role", "frontend", "--registry-url", "http://127.0.0.1:9", "--name", "f1",
        "--state-dir", str(settings.state_dir), "--template-dir", str(settings.template_dir),
        "--http-port", str(settings.http_port), "--https-port", str(settings.https_port),
        "--dry-run",
    ]  # fmt: skip
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 1 and "bogus-keyword" in done.output

    assert settings.template_dir is not None
    (settings.template_dir / "haproxy.cfg.j2").write_text("{{ v.no_such_value }}\n")
    result = frontend_dry_run(settings)
    assert not result.ok and "render failed" in result.report
    shutil.rmtree(settings.template_dir)
    assert frontend_dry_run(settings).ok
