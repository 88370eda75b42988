"""Operator templates cannot run code (issue 12 hole 7).

Every template renders in Jinja's immutable sandbox: the classic escapes are refused, nothing
executes (a marker file is never created) and the last good config keeps serving. An override
folder another user could write is refused at start with one line, and a file made unsafe
while the agent runs is refused at the next render.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from agent.cli import main as agent_main
from agent.errors import RenderError
from agent.machine.proxy import MachineProxy
from agent.proxy.config_apply import ConfigApplier
from agent.proxy.haproxy import view as haproxy
from agent.proxy.nginx import view as nginx
from agent.proxy.nginx.process import NginxProcess
from agent.proxy.render import (
    UnsafeTemplates,
    default_template_dir,
    make_environment,
    render,
    template_dirs,
)
from agent.settings import AgentSettings
from common.wire import DesiredInstance, DesiredState, RoutingTable
from tests.conftest import free_port
from tests.support.proxies import running_nginx, web_instance

NOBODY = 65534


def _payloads(marker: Path) -> list[str]:
    """Known sandbox escapes, each of which would create `marker` if it ran."""
    run = "os.system('touch " + str(marker) + "')"
    return [
        "{{ cycler.__init__.__globals__." + run + " }}",
        "{{ joiner.__init__.__globals__." + run + " }}",
        "{{ lipsum.__globals__['os'].system('touch " + str(marker) + "') }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__." + run + " }}",
        "{{ namespace.__init__.__globals__ }}",
        "{% set x = apps.append(1) %}{{ x }}",  # immutable: no mutating calls either
    ]


def _view() -> nginx.NginxView:
    return nginx.build_view(
        [_inst(1)],
        {1: 20001},
        address="127.0.0.1",
        port=8081,
        paths=nginx.NginxPaths(pid="/p/pid", error_log="/p/e", access_log="/p/a", temp="/p/t"),
    )


def _inst(iid: int) -> DesiredInstance:
    return web_instance(iid, "alpha")


@pytest.mark.parametrize("index", range(7))
def test_escapes_in_an_override_are_refused_and_run_nothing(tmp_path: Path, index: int) -> None:
    marker = tmp_path / "pwned"
    overrides = tmp_path / "templates"
    overrides.mkdir()
    (overrides / nginx.TEMPLATE).write_text(_payloads(marker)[index])
    env = make_environment(template_dirs(overrides))
    with pytest.raises(RenderError) as refused:
        nginx.render_files(env, _view())
    assert "template nginx.conf.j2 failed" in str(refused.value)
    assert not marker.exists()


def test_haproxy_templates_are_sandboxed_too(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    overrides = tmp_path / "templates"
    overrides.mkdir()
    (overrides / haproxy.MAP_TEMPLATE).write_text(_payloads(marker)[0])
    env = make_environment(template_dirs(overrides))
    built = haproxy.build_view(
        RoutingTable(index=1, apps=[]),
        bind_address="127.0.0.1",
        http_port=8080,
        https_port=8443,
        cert_path=Path("/etc/paas/cert.pem"),
        admin_socket=Path("/run/paas/admin.sock"),
    )
    with pytest.raises(RenderError):
        haproxy.render_files(env, built.view)
    assert not marker.exists()
    # The defaults render in the same sandbox.
    assert "frontend https" in render(
        make_environment(template_dirs(None)), haproxy.MAIN_TEMPLATE, {"v": built.view}
    )


@pytest.fixture
def live_nginx(tmp_path: Path) -> Iterator[tuple[NginxProcess, ConfigApplier, int]]:
    with running_nginx(tmp_path) as live:
        yield live


def test_a_refused_template_keeps_the_last_good_config_serving(
    tmp_path: Path, live_nginx: tuple[NginxProcess, ConfigApplier, int]
) -> None:
    process, applier, port = live_nginx
    view = nginx.build_view(
        [],
        {},
        address="127.0.0.1",
        port=port,
        paths=process.paths(),
        worker_user=process.worker_user,
    )
    assert applier.apply(nginx.render_files(make_environment(template_dirs(None)), view)).applied
    live = process.conf.read_text()

    marker = tmp_path / "pwned"
    overrides = tmp_path / "templates"
    overrides.mkdir()
    good = (default_template_dir() / nginx.TEMPLATE).read_text()
    (overrides / nginx.TEMPLATE).write_text(good + _payloads(marker)[0] + "\n")
    with pytest.raises(RenderError):
        nginx.render_files(make_environment(template_dirs(overrides)), view)
    assert not marker.exists()
    assert process.conf.read_text() == live
    answer = httpx.get(
        f"http://127.0.0.1:{port}/", headers={"Host": "x.paas.test"}, trust_env=False
    )
    assert answer.status_code == 404  # the last good config still answers


# ---- who may write the override folder ------------------------------------------------------


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    shutil.copy(default_template_dir() / nginx.TEMPLATE, folder / nginx.TEMPLATE)
    return folder


def test_a_safe_folder_is_used_and_logged_with_its_overrides(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _folder(tmp_path)
    with caplog.at_level(logging.INFO, logger="agent.proxy.render"):
        assert template_dirs(folder) == [folder, default_template_dir()]
    assert f"operator templates in {folder} override: nginx.conf.j2" in caplog.text


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda f: os.chmod(f, 0o777), id="folder-world-writable"),
        pytest.param(lambda f: os.chmod(f, 0o770), id="folder-group-writable"),
        pytest.param(lambda f: os.chown(f, NOBODY, NOBODY), id="folder-owned-by-nobody"),
        pytest.param(lambda f: os.chmod(f / nginx.TEMPLATE, 0o666), id="file-writable"),
        pytest.param(lambda f: os.chown(f / nginx.TEMPLATE, NOBODY, -1), id="file-of-nobody"),
        pytest.param(lambda f: (f / "extra.j2").write_text("x"), id="safe-extra-file"),
    ],
)
def test_unsafe_folders_are_refused_at_start(tmp_path: Path, spoil: object) -> None:
    folder = _folder(tmp_path)
    spoil(folder)  # type: ignore[operator]
    if (folder / "extra.j2").exists():  # the control case: a safe extra file is fine
        assert template_dirs(folder)[0] == folder
        return
    with pytest.raises(UnsafeTemplates) as refused:
        template_dirs(folder)
    assert "refusing operator template folder" in str(refused.value)


def test_a_writable_parent_folder_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    folder = _folder(parent)
    os.chmod(parent, 0o777)  # anyone could rename `templates` and put their own in its place
    with pytest.raises(UnsafeTemplates, match="writable by group or others"):
        template_dirs(folder)


def test_a_symlink_to_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "evil.j2"
    target.write_text("{{ 1 }}")
    os.chown(target, NOBODY, NOBODY)
    (folder / nginx.TEMPLATE).unlink()
    (folder / nginx.TEMPLATE).symlink_to(target)
    with pytest.raises(UnsafeTemplates, match="owned by uid 65534"):
        template_dirs(folder)


def test_a_file_made_unsafe_while_running_is_refused_at_the_next_render(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    env = make_environment(template_dirs(folder))
    assert "events {" in nginx.render_files(env, _view())[nginx.MAIN_FILE]
    os.chown(folder / nginx.TEMPLATE, NOBODY, -1)
    with pytest.raises(RenderError, match=r"refusing template nginx\.conf\.j2"):
        nginx.render_files(env, _view())
    # An unsafe file added later to a folder that did not exist at start: refused too.
    later = tmp_path / "later"
    env = make_environment(template_dirs(later))
    later.mkdir()
    (later / nginx.TEMPLATE).write_text("{{ 1 }}")
    os.chmod(later / nginx.TEMPLATE, 0o646)
    with pytest.raises(RenderError, match="writable by group or others"):
        nginx.render_files(env, _view())


def test_the_agent_refuses_to_start_with_one_clear_line(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    os.chmod(folder / nginx.TEMPLATE, 0o666)
    result = CliRunner().invoke(
        agent_main,
        [
            "--role",
            "machine",
            "--registry-url",
            "http://127.0.0.1:9",
            "--name",
            "m1",
            "--state-dir",
            str(tmp_path / "state"),
            "--template-dir",
            str(folder),
            "--dry-run",
        ],
        env={"PAAS_JOIN_TOKEN": "join-secret"},
    )
    assert result.exit_code != 0
    assert "refusing operator template folder" in result.output
    assert "writable by group or others" in result.output
    assert "Traceback" not in result.output


def test_the_machine_proxy_reports_a_sandbox_violation_and_keeps_serving(tmp_path: Path) -> None:
    """The agent's own path: the payload is refused like any render failure (the host's
    proxy_error says why), nothing runs, the live config and nginx stay as they were."""
    marker = tmp_path / "pwned"
    overrides = tmp_path / "templates"
    overrides.mkdir()
    settings = AgentSettings(
        role="machine",
        registry_url="http://127.0.0.1:9",
        join_token="join-secret",
        name="m1",
        state_dir=tmp_path / "state",
        proxy_port=free_port(),
        template_dir=overrides,
    )
    proxy = MachineProxy(settings, make_environment(template_dirs(overrides)))
    try:
        assert asyncio.run(proxy.apply({}, index=1))
        assert proxy.error is None
        live = proxy.process.conf.read_text()
        good = (default_template_dir() / nginx.TEMPLATE).read_text()
        (overrides / nginx.TEMPLATE).write_text(good + _payloads(marker)[0] + "\n")
        proxy.follow(DesiredState(index=2, host="m1", instances=[], frontends=["127.0.0.2"]))
        assert asyncio.run(proxy.apply({}, index=2))
        assert proxy.error is not None and "template nginx.conf.j2 failed" in proxy.error
        assert proxy.applied_index == 1
        assert not marker.exists()
        assert proxy.process.conf.read_text() == live
        answer = httpx.get(
            f"http://127.0.0.1:{settings.proxy_port}/",
            headers={"Host": "x.paas.test"},
            trust_env=False,
        )
        assert answer.status_code == 404
    finally:
        proxy.stop(grace_s=5.0)
