"""Procfile and paas.toml parsing (pure functions shared by the registry and the CLI)."""

from __future__ import annotations

import pytest

from common.manifest import (
    Manifest,
    ManifestError,
    parse_manifest,
    parse_procfile,
    require_web,
)


def test_procfile_lines_comments_and_blanks() -> None:
    text = "# comment\n\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\nworker:  python w.py \n"
    assert parse_procfile(text) == {
        "web": "gunicorn app:app --bind 0.0.0.0:$PORT",
        "worker": "python w.py",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("web python app.py\n", "line 1: expected 'type: command'"),
        ("web:\n", "line 1: expected 'type: command'"),
        ("Web: x\n", "invalid process type"),
        ("we;b: x\n", "invalid process type"),
        ("web: a\nweb: b\n", "appears twice"),
    ],
)
def test_procfile_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_procfile(text)


def test_web_is_required() -> None:
    with pytest.raises(ManifestError, match="Procfile has no web process"):
        require_web(parse_procfile("worker: python w.py\n"))


def test_manifest_app_table_and_top_level() -> None:
    text = '[app]\nhealth_path = "/health"\ninstances = 2\ndomains = ["a.example.com"]\n'
    assert parse_manifest(text) == Manifest(
        health_path="/health", instances=2, domains=["a.example.com"]
    )
    assert parse_manifest('health_path = "/up"\n') == Manifest(health_path="/up")
    assert parse_manifest("") == Manifest()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "unknown key colour"),
        ("[app]\nport = 1\n", r"unknown key \[app\].port"),
        ('health_path = "x"\n', "invalid health-check path"),
        ("instances = -1\n", "between 0 and 100"),
        ('instances = "2"\n', "must be an integer"),
        ("instances = true\n", "must be an integer"),
        ('domains = ["a.com;include"]\n', "invalid domain"),
        ('domains = "a.com"\n', "list of strings"),
        ("instances = 1\n[app]\ninstances = 2\n", "set twice"),
        ("[app\n", "not valid TOML"),
    ],
)
def test_manifest_errors(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(text)


def test_procfile_process_types_are_bounded() -> None:
    from common.manifest import MAX_PROCESS_TYPES

    lines = [f"p{i}: run {i}" for i in range(MAX_PROCESS_TYPES)]
    assert len(parse_procfile("\n".join(lines))) == MAX_PROCESS_TYPES
    with pytest.raises(ManifestError, match=f"more than {MAX_PROCESS_TYPES} process types"):
        parse_procfile("\n".join([*lines, "extra: run"]))
    with pytest.raises(ManifestError, match="line 17"):
        parse_procfile("\n".join(f"p{i}: run" for i in range(500)))


@pytest.mark.parametrize(
    "text",
    [
        "domains = " + "[" * 100_000 + "]" * 100_000,
        "constraints = " + "{a = " * 100_000 + '"b"' + "}" * 100_000,
        "x = " + "[" * 40,  # unclosed, still refused before tomllib recurses
    ],
)
def test_deep_nesting_is_a_manifest_error_not_a_recursion_error(text: str) -> None:
    with pytest.raises(ManifestError, match="deeper than"):
        parse_manifest(text)


def test_ordinary_nesting_still_parses() -> None:
    manifest = parse_manifest('[app]\ndomains = ["a.example.com"]\nconstraints = {zone = "a"}\n')
    assert manifest.domains == ["a.example.com"] and manifest.constraints == {"zone": "a"}
