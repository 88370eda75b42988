"""ConfigApplier logic with plain callables standing in for the validator and the reload.

The real binaries are exercised in tests/integration/test_haproxy_real.py; here we pin the
file rules: unchanged -> no write/no reload, refused -> live untouched, reload failure ->
rollback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ReloadFailed, ValidationFailed
from agent.proxy.config_apply import ConfigApplier


class Recorder:
    def __init__(self) -> None:
        self.validated: list[str] = []
        self.reloads = 0
        self.refuse_text: str | None = None
        self.fail_reloads = 0

    def validate(self, staged: Path) -> None:
        text = staged.read_text()
        self.validated.append(text)
        assert staged.parent.name.endswith(".staging")
        if self.refuse_text and self.refuse_text in text:
            line = text.splitlines().index(self.refuse_text) + 1
            raise ValidationFailed(f"parsing [{staged}:{line}] : unknown keyword")

    def reload(self) -> None:
        self.reloads += 1
        if self.fail_reloads:
            self.fail_reloads -= 1
            raise ReloadFailed("master did not answer")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ConfigApplier, Recorder, Path]:
    rec = Recorder()
    live = tmp_path / "conf"
    applier = ConfigApplier(live, "main.cfg", validate=rec.validate, reload=rec.reload)
    return applier, rec, live


def test_first_apply_writes_and_reloads(setup: tuple[ConfigApplier, Recorder, Path]) -> None:
    applier, rec, live = setup
    result = applier.apply({"main.cfg": "a\n", "hosts.map": "x y\n"})
    assert result.changed and result.applied and result.error is None
    assert (live / "main.cfg").read_text() == "a\n"
    assert (live / "hosts.map").read_text() == "x y\n"
    assert rec.reloads == 1


def test_unchanged_means_no_validate_no_reload(
    setup: tuple[ConfigApplier, Recorder, Path],
) -> None:
    applier, rec, live = setup
    applier.apply({"main.cfg": "a\n"})
    mtime = (live / "main.cfg").stat().st_mtime_ns
    result = applier.apply({"main.cfg": "a\n"})
    assert not result.changed and result.applied and result.error is None
    assert rec.reloads == 1 and len(rec.validated) == 1
    assert (live / "main.cfg").stat().st_mtime_ns == mtime


def test_only_changed_files_are_replaced(setup: tuple[ConfigApplier, Recorder, Path]) -> None:
    applier, _, live = setup
    applier.apply({"main.cfg": "a\n", "hosts.map": "x\n"})
    inode = (live / "main.cfg").stat().st_ino
    result = applier.apply({"main.cfg": "a\n", "hosts.map": "y\n"})
    assert result.applied and result.changed
    assert (live / "main.cfg").stat().st_ino == inode
    assert (live / "hosts.map").read_text() == "y\n"


def test_staging_holds_all_files_for_relative_includes(
    setup: tuple[ConfigApplier, Recorder, Path],
) -> None:
    applier, _, _ = setup
    applier.apply({"main.cfg": "a\n", "hosts.map": "x\n"})
    applier.apply({"main.cfg": "b\n", "hosts.map": "x\n"})
    assert (applier.staging_dir / "hosts.map").read_text() == "x\n"
    assert (applier.staging_dir / "main.cfg").read_text() == "b\n"


def test_refused_config_keeps_live_and_reports_lines(
    setup: tuple[ConfigApplier, Recorder, Path],
) -> None:
    applier, rec, live = setup
    applier.apply({"main.cfg": "good\n"})
    rec.refuse_text = "bogus keyword"
    result = applier.apply({"main.cfg": "one\ntwo\nbogus keyword\nfour\n"})
    assert result.changed and not result.applied
    assert result.error is not None
    assert "unknown keyword" in result.error
    assert ">    3 | bogus keyword" in result.error
    assert (live / "main.cfg").read_text() == "good\n"
    assert rec.reloads == 1


def test_reload_failure_restores_last_good(setup: tuple[ConfigApplier, Recorder, Path]) -> None:
    applier, rec, live = setup
    applier.apply({"main.cfg": "v1\n", "hosts.map": "m1\n"})
    rec.fail_reloads = 1
    result = applier.apply({"main.cfg": "v2\n", "hosts.map": "m1\n", "new.map": "n\n"})
    assert result.changed and not result.applied
    assert result.error is not None and "master did not answer" in result.error
    assert (live / "main.cfg").read_text() == "v1\n"
    assert (live / "hosts.map").read_text() == "m1\n"
    assert not (live / "new.map").exists()
    assert rec.reloads == 3  # v1, failed v2, restored v1


def test_hostile_file_names_refused(setup: tuple[ConfigApplier, Recorder, Path]) -> None:
    applier, _, _ = setup
    for name in ("../evil", "/etc/passwd"):
        with pytest.raises(ValueError):
            applier.apply({"main.cfg": "a\n", name: "x"})
    with pytest.raises(ValueError):
        applier.apply({"other.cfg": "a\n"})


def test_check_validates_without_touching_the_live_files(
    setup: tuple[ConfigApplier, Recorder, Path],
) -> None:
    applier, rec, live = setup
    applier.apply({"main.cfg": "a\n", "hosts.map": "x y\n"})
    rec.refuse_text = "bogus"
    refused = applier.check({"main.cfg": "a\nbogus\n", "hosts.map": "x y\nhi y\n"})
    assert refused.changed and not refused.applied and "unknown keyword" in (refused.error or "")
    accepted = applier.check({"main.cfg": "a\n", "hosts.map": "x y\nhi y\n"})
    assert accepted.changed and accepted.applied and accepted.error is None
    assert applier.check({"main.cfg": "a\n", "hosts.map": "x y\n"}).changed is False
    assert (live / "hosts.map").read_text() == "x y\n"  # nothing live changed, no reload
    assert (live / "main.cfg").read_text() == "a\n" and rec.reloads == 1


def test_apply_after_check_validates_once(setup: tuple[ConfigApplier, Recorder, Path]) -> None:
    """The frontend checks before a runtime update and then applies the same files: the
    binary validates them once; other files, or the same files after a write, again."""
    applier, rec, live = setup
    applier.apply({"main.cfg": "a\n"})
    assert applier.check({"main.cfg": "b\n"}).applied and len(rec.validated) == 2
    assert applier.apply({"main.cfg": "b\n"}, reload=False).applied
    assert len(rec.validated) == 2 and (live / "main.cfg").read_text() == "b\n"
    applier.check({"main.cfg": "c\n"})
    assert applier.apply({"main.cfg": "d\n"}).applied and len(rec.validated) == 4
    assert (live / "main.cfg").read_text() == "d\n"
