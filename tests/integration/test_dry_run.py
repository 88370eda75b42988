"""`paas-agent --role frontend|machine --dry-run`: the diff of an edited host template
against the live config, validated with the real HAProxy or nginx; a broken template shows
the error, exits 1 and leaves the live config untouched."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.dryrun import frontend_dry_run, machine_dry_run
from agent.frontend.agent import FrontendAgent, worker_identity
from agent.frontend.default_cert import ensure_default_cert
from agent.link import statefile
from agent.machine.instances import save_desired
from agent.proxy.haproxy.view import build_view, render_files
from agent.proxy.nginx import view as nginx
from agent.proxy.nginx.process import NginxProcess, default_worker_user
from agent.proxy.render import default_template_dir, make_environment, template_dirs
from agent.settings import AgentSettings
from common.wire import DesiredInstance, DesiredState, RouteApp, RouteServer, RoutingTable
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


# ---- machine role: nginx ------------------------------------------------------------------


DESIRED = DesiredState(
    index=4,
    host="m1",
    instances=[
        DesiredInstance(
            id=1,
            app="hello",
            release=1,
            process="web",
            command="python app.py",
            artifact_sha256="a" * 64,
            env={},
            health_path="/",
            domains=["hello.paas.test"],
            serve=True,
        )
    ],
)


@pytest.fixture
def machine_settings(tmp_path: Path) -> AgentSettings:
    (proxy_port,) = free_ports(1)
    state = tmp_path / "mstate"
    state.mkdir()
    (tmp_path / "mtemplates").mkdir()
    save_desired(state, DESIRED)
    return AgentSettings(
        role="machine",
        registry_url="http://127.0.0.1:9",
        name="m1",
        state_dir=state,
        proxy_port=proxy_port,
        template_dir=tmp_path / "mtemplates",
    )


def make_machine_live(settings: AgentSettings) -> Path:
    """The live nginx folder as the agent leaves it (folders prepared, config applied)."""
    process = NginxProcess(settings.state_dir / "nginx", worker_user=default_worker_user())
    process.prepare()
    first = machine_dry_run(settings)
    assert first.ok, first.report
    assert "+++ rendered/nginx.conf" in first.report and "hello.paas.test" in first.report
    env = make_environment(template_dirs(None))
    view = nginx.build_view(
        DESIRED.instances,
        {},
        address=settings.address,
        port=settings.proxy_port,
        paths=process.paths(),
        worker_user=process.worker_user,
    )
    for name, text in nginx.render_files(env, view).items():
        (process.conf_dir / name).write_text(text)
    return process.conf_dir


def test_machine_dry_run_shows_the_diff_and_a_broken_template(
    machine_settings: AgentSettings,
) -> None:
    live = make_machine_live(machine_settings)
    before = {p.name: p.read_text() for p in live.iterdir()}
    assert "no differences from the live config" in machine_dry_run(machine_settings).report

    template = default_template_dir() / "nginx.conf.j2"
    edited = machine_settings.template_dir / "nginx.conf.j2"  # type: ignore[operator]
    text = template.read_text()
    assert "worker_connections 1024;" in text
    edited.write_text(text.replace("worker_connections 1024;", "worker_connections 2048;"))
    result = machine_dry_run(machine_settings)
    assert result.ok, result.report
    assert "-    worker_connections 1024;\n+    worker_connections 2048;" in result.report
    assert "validation ok (nginx -t)" in result.report

    edited.write_text(
        text.replace("server_tokens off;", "server_tokens off;\n    bogus_directive on;")
    )
    result = machine_dry_run(machine_settings)
    assert not result.ok
    assert "+    bogus_directive on;" in result.report
    assert "validation FAILED" in result.report and "bogus_directive" in result.report
    assert {p.name: p.read_text() for p in live.iterdir()} == before

    args = [
        "--role", "machine", "--registry-url", "http://127.0.0.1:9", "--name", "m1",
        "--state-dir", str(machine_settings.state_dir),
        "--template-dir", str(machine_settings.template_dir),
        "--proxy-port", str(machine_settings.proxy_port), "--dry-run",
    ]  # fmt: skip
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 1 and "bogus_directive" in done.output
