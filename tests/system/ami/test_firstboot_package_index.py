"""paas-firstboot: a machine's [package_index] user data becomes its build index settings,
checked by the agent's own settings model; bad values are one line that never shows a
token, and change nothing."""

from __future__ import annotations

import stat
from pathlib import Path
from types import ModuleType

import pytest

from agent.settings import load_settings
from tests.system.ami.test_firstboot import MACHINE, _run, firstboot_module  # noqa: F401

TOKEN = "mirror-token-9f8e7d"


def _machine(index: str) -> str:
    return MACHINE + "\n[package_index]\n" + index


def test_package_index_user_data_reaches_the_agent_settings(fb: ModuleType, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    etc = tmp_path / "etc"
    user_data = _machine(
        f'index_url = "https://ci:{TOKEN}@mirror.internal/simple"\n'
        'extra_index_urls = ["https://extra.internal/simple"]\n'
        f'find_links = ["{wheels}"]\n'
        'trusted_hosts = ["mirror.internal"]\n'
        'build_env = { UV_INDEX_STRATEGY = "unsafe-best-match" }\n'
    )
    assert _run(fb, etc, user_data, tmp_path) == 0
    path = etc / "agent-machine.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the mirror's token too
    index = load_settings(path).package_index
    assert index.index_url == f"https://ci:{TOKEN}@mirror.internal/simple"
    assert index.extra_index_urls == ("https://extra.internal/simple",)
    assert index.find_links == (str(wheels),)
    assert index.trusted_hosts == ("mirror.internal",)
    assert index.build_env == {"UV_INDEX_STRATEGY": "unsafe-best-match"}
    assert index.uv_env()["UV_INDEX_URL"].endswith("@mirror.internal/simple")


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (f'index_url = "ftp://ci:{TOKEN}@mirror/simple"\n', "http://, https:// or file://"),
        ('find_links = ["/nonexistent/wheels"]\n', "does not exist"),
        ("no_index = true\n", "no_index needs find_links"),
        ('index = "https://mirror/simple"\n', "unknown [package_index] keys"),
        ('build_env = { LD_PRELOAD = "/x.so" }\n', "UV_* or PIP_*"),
    ],
)
def test_bad_package_index_user_data_is_one_line_and_changes_nothing(
    fb: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    index: str,
    message: str,
) -> None:
    etc = tmp_path / "etc"
    assert _run(fb, etc, MACHINE, tmp_path) == 0
    good = (etc / "agent-machine.toml").read_text()
    capsys.readouterr()
    assert _run(fb, etc, _machine(index), tmp_path) == 1
    err = capsys.readouterr().err
    assert message in err and "nothing was changed" in err
    assert len(err.strip().splitlines()) == 1
    assert TOKEN not in err
    assert (etc / "agent-machine.toml").read_text() == good


def test_package_index_is_for_machines_only(
    fb: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frontend = MACHINE.replace('role = "machine"', 'role = "frontend"')
    user_data = frontend + '\n[package_index]\nindex_url = "https://mirror.internal/simple"\n'
    assert _run(fb, tmp_path / "etc", user_data, tmp_path) == 1
    assert "for machine hosts" in capsys.readouterr().err
    twice = _machine('index_url = "https://a/simple"\n').replace(
        "[agent]", '[agent]\nindex_url = "https://b/simple"'
    )
    assert _run(fb, tmp_path / "etc", twice, tmp_path) == 1
    assert "both [agent] and [package_index]" in capsys.readouterr().err
