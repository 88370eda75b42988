"""The layer rules of docs/architecture.md hold: the import-linter contracts in pyproject.toml
([tool.importlinter]) are all kept. `make lint` runs the same check; this puts it in
`make test` too, so a change that breaks a layer fails where every change is tested."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_every_layer_contract_is_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # the contracts name the packages at the repository's root
    # import-linter configures logging with dictConfig, which disables every logger that
    # exists already: the tests after this one in the same process would capture no records.
    loggers = [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.disabled
    ]
    try:
        status = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    finally:
        for logger in loggers:
            logger.disabled = False
    out = capsys.readouterr().out
    assert status == 0, out
    assert "0 broken" in out, out
