"""paas-firstboot: user data (file or a real IMDSv2 HTTP exchange) -> validated settings files."""

from __future__ import annotations

import importlib.util
import stat
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from agent.settings import load_settings
from tests.conftest import free_port
from tests.system.ami.fake_imds import endpoint, fake_imds

SCRIPT = Path(__file__).resolve().parents[3] / "ami" / "files" / "paas_firstboot.py"
JOIN = "Hnu88MajdDjKoVUG9Ar5VC8kaZAcNODaRpaDGnTAJsI"
PIN = "sha256:" + "5e" * 32
MACHINE = f"""
# paas host configuration
role = "machine"
registry_url = "https://10.0.0.5:8070"
registry_fingerprint = "{PIN}"
join_token = "{JOIN}"
name = "web-1"
address = "10.0.1.23"

[agent]
labels = {{ zone = "a" }}
"""


@pytest.fixture(name="fb")
def firstboot_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("paas_firstboot", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    # The image has paas-app; this machine may not: any existing unprivileged user will do.
    monkeypatch.setattr(module, "APP_USER", "nobody")
    return module


def _run(fb: ModuleType, etc: Path, user_data: str, tmp_path: Path) -> int:
    source = tmp_path / "user-data"
    source.write_text(user_data)
    return fb.main(["--user-data", str(source), "--etc", str(etc)])


def test_machine_user_data_becomes_agent_settings(
    fb: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "etc"
    assert _run(fb, etc, MACHINE, tmp_path) == 0
    path = etc / "agent-machine.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the join token
    settings = load_settings(path)
    assert (settings.role, settings.name, settings.address) == ("machine", "web-1", "10.0.1.23")
    assert settings.registry_url == "https://10.0.0.5:8070"
    assert settings.registry_fingerprint == PIN  # the agent pins the registry's certificate
    assert settings.join_token == JOIN
    assert settings.run_as_user is None  # deprecated: each app gets its own uid
    assert settings.app_uids == "70000-79999"
    assert settings.labels == {"zone": "a"}
    assert str(settings.state_dir) == "/var/lib/paas/machine"
    assert "written" in capsys.readouterr().out

    before = path.stat().st_mtime_ns
    assert _run(fb, etc, MACHINE, tmp_path) == 0  # every boot: unchanged means untouched
    assert path.stat().st_mtime_ns == before
    assert "unchanged" in capsys.readouterr().out


def test_frontend_defaults_and_role_switch(fb: ModuleType, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert _run(fb, etc, MACHINE, tmp_path) == 0
    frontend = MACHINE.replace('role = "machine"', 'role = "frontend"').replace(
        "[agent]", '[agent]\ndomain = "apps.example.com"'
    )
    assert _run(fb, etc, frontend, tmp_path) == 0
    settings = load_settings(etc / "agent-frontend.toml")
    assert (settings.http_port, settings.https_port, settings.domain) == (
        80,
        443,
        "apps.example.com",
    )
    assert settings.run_as_user is None
    # The machine file was written by firstboot: gone, so only one agent starts.
    assert not (etc / "agent-machine.toml").exists()


def test_hand_written_settings_of_another_role_are_kept(fb: ModuleType, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent-frontend.toml").write_text("# written by hand\n")
    assert _run(fb, etc, MACHINE, tmp_path) == 0
    assert (etc / "agent-frontend.toml").read_text() == "# written by hand\n"


@pytest.mark.parametrize(
    ("user_data", "message"),
    [
        ("role = 'machine'\nregistry_url = 'http://r:8070'\n", "join_token is required"),
        (MACHINE.replace('role = "machine"', 'role = "db"'), "role 'db' must be one of"),
        (MACHINE.replace('name = "web-1"', 'name = "Web_1"'), "invalid host name"),
        (MACHINE.replace('address = "10.0.1.23"', 'address = "a b"'), "invalid address"),
        (MACHINE.replace("https://10.0.0.5", "ftp://10.0.0.5"), "must start with http"),
        (MACHINE.replace("https://10.0.0.5", "http://10.0.0.5"), "refusing plain http://"),
        (MACHINE.replace(PIN, "sha256:00"), "64 hex digits"),
        (MACHINE.replace(JOIN, 'x" \nrole = "frontend'), "not valid TOML"),
        (MACHINE.replace(JOIN, "short"), "join_token must be the token"),
        (MACHINE + "\nsecret = 1\n", "Extra inputs are not permitted"),  # an [agent] key
        (MACHINE.replace("[agent]", "color = 1\n[agent]"), "unknown user-data keys"),
        (MACHINE.replace('zone = "a"', 'zone = "A B"'), "invalid label"),
        (MACHINE.replace("[agent]", "[agent]\nproxy_port = 70000"), "outside 1-65535"),
        ("role = [", "not valid TOML"),
        ("   \n", "empty"),
    ],
)
def test_bad_user_data_is_one_clear_error_and_changes_nothing(
    fb: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    user_data: str,
    message: str,
) -> None:
    etc = tmp_path / "etc"
    assert _run(fb, etc, MACHINE, tmp_path) == 0
    good = (etc / "agent-machine.toml").read_text()
    capsys.readouterr()
    assert _run(fb, etc, user_data, tmp_path) == 1
    err = capsys.readouterr().err
    assert message in err and "nothing was changed" in err
    assert len(err.strip().splitlines()) == 1
    assert (etc / "agent-machine.toml").read_text() == good
    assert sorted(p.name for p in etc.iterdir()) == ["agent-machine.toml"]


def test_values_cannot_inject_settings(
    fb: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value that tries to break out of its TOML string is refused by the agent's own
    settings check before anything is written; the writer keeps a quote inside its string
    and refuses control characters."""
    etc = tmp_path / "etc"
    breakout = 'https://10.0.0.5:8070/"\\nrole = "frontend'
    tricky = MACHINE.replace(
        'registry_url = "https://10.0.0.5:8070"', f"registry_url = '{breakout}'"
    )
    assert _run(fb, etc, tricky, tmp_path) == 1
    assert "must look like http://HOST:PORT" in capsys.readouterr().err
    assert not (etc / "agent-machine.toml").exists()
    assert tomllib.loads(fb.to_toml({"registry_url": breakout})) == {"registry_url": breakout}
    with pytest.raises(fb.FirstbootError, match="control characters"):
        fb.to_toml({"registry_url": "http://x\nrole = 'frontend'"})


def test_cloud_config_is_left_to_cloud_init(
    fb: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "etc"
    assert _run(fb, etc, "#cloud-config\nwrite_files: []\n", tmp_path) == 0
    assert "cloud-init" in capsys.readouterr().out
    assert not etc.exists()


def test_registry_user_data(fb: ModuleType, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    text = 'role = "registry"\n[registry]\ndomain = "apps.example.com"\n'
    config = fb.build_config(fb.parse_user_data(text), fb.Facts(None, None), etc=etc,
                             default_role="machine")  # fmt: skip
    assert config.path == etc / "registry.toml"
    assert config.values == {
        "state_dir": "/var/lib/paas/registry",
        "bind_host": "0.0.0.0",
        "bind_port": 8070,
        "domain": "apps.example.com",
    }
    with pytest.raises(fb.FirstbootError, match=r"invalid \[registry\] settings"):
        fb.build_config({"role": "registry", "registry": {"domain": "Bad Domain"}},
                        fb.Facts(None, None), etc=etc, default_role="machine")  # fmt: skip
    with pytest.raises(fb.FirstbootError, match="for agent hosts"):
        fb.build_config({"role": "registry", "join_token": JOIN}, fb.Facts(None, None),
                        etc=etc, default_role="machine")  # fmt: skip


def test_imdsv2_user_data_and_instance_defaults(fb: ModuleType, tmp_path: Path) -> None:
    """Over real HTTP: token first (PUT), then user data, instance id and private IPv4."""
    etc = tmp_path / "etc"
    (tmp_path / "etc").mkdir()
    (etc / "image.toml").write_text('role = "machine"\n')
    user_data = f'registry_url = "https://10.0.0.5:8070"\njoin_token = "{JOIN}"\n'
    user_data += f'registry_fingerprint = "{PIN}"\n'
    with fake_imds(
        "127.0.0.1", user_data=user_data, instance_id="i-0abc123", local_ipv4="10.0.1.7"
    ) as server:
        assert fb.main(["--imds-url", endpoint(server), "--etc", str(etc)]) == 0
        assert server.requests[0] == ("PUT", "/latest/api/token")
    settings = load_settings(etc / "agent-machine.toml")
    assert (settings.role, settings.name, settings.address) == ("machine", "i-0abc123", "10.0.1.7")


def test_imds_without_user_data_configures_nothing(
    fb: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "etc"
    with fake_imds("127.0.0.1", user_data=None, instance_id="i-1", local_ipv4="10.0.0.9") as srv:
        assert fb.main(["--imds-url", endpoint(srv), "--etc", str(etc)]) == 0
    assert "no user data" in capsys.readouterr().out
    assert not etc.exists()


def test_unreachable_imds_is_reported(
    fb: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert fb.main(["--imds-url", url, "--etc", str(tmp_path), "--imds-wait", "0.3"]) == 1
    assert "did not answer within 0.3s" in capsys.readouterr().err
