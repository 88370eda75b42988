"""Issue 15 item 1: paas.toml [app] health_check_timeout and health_threshold reach each
instance the agent runs (DesiredInstance), with defaults when left out; bad values are refused
with the key named and change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.manifest import ManifestError, parse_manifest
from tests.support.registry_app import TestRegistry, test_registry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[TestRegistry]:
    with test_registry(tmp_path, domain="paas.test") as registry:
        yield registry


def test_manifest_reads_the_check_settings() -> None:
    manifest = parse_manifest("[app]\nhealth_check_timeout = 10\nhealth_threshold = 5\n")
    assert (manifest.health_check_timeout, manifest.health_threshold) == (10.0, 5)
    left_out = parse_manifest("[app]\n")
    assert (left_out.health_check_timeout, left_out.health_threshold) == (None, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("health_check_timeout = 0.1", "health_check_timeout must be between 0.5 and 300"),
        ("health_check_timeout = '5'", "health_check_timeout must be a number"),
        ("health_threshold = 0", "health_threshold must be a whole number from 1 to 100"),
        ("health_threshold = 2.5", "health_threshold must be a whole number"),
        ("health_threshold = true", "health_threshold must be a whole number"),
    ],
)
def test_bad_check_settings_are_refused(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(f"[app]\n{text}\n")


def _web(reg: TestRegistry, token: str) -> dict:
    [web] = [i for i in reg.desired("m1", token)["instances"] if i["process"] == "web"]
    return web


def test_settings_reach_the_agent_and_stay_until_changed(reg: TestRegistry) -> None:
    token = reg.join("m1")
    reg.create_app("shop")
    reg.deploy("shop", {"Procfile": "web: python app.py\n"})
    web = _web(reg, token)
    assert (web["health_check_timeout_s"], web["health_threshold"]) == (5.0, 3)
    toml = "[app]\nhealth_check_timeout = 12\nhealth_threshold = 4\n"
    reg.deploy("shop", {"Procfile": "web: python app.py\n", "paas.toml": toml})
    for web in [i for i in reg.desired("m1", token)["instances"] if i["process"] == "web"]:
        assert (web["health_check_timeout_s"], web["health_threshold"]) == (12.0, 4)
    reg.deploy("shop", {"Procfile": "web: python app.py\n", "paas.toml": "[app]\n"})
    web = max(
        (i for i in reg.desired("m1", token)["instances"] if i["process"] == "web"),
        key=lambda i: i["release"],
    )
    assert (web["health_check_timeout_s"], web["health_threshold"]) == (12.0, 4)  # kept
