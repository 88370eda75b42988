"""Apply rendered proxy config: compare, stage, validate with the real binary, swap, reload.

The one place that writes proxy config. Unchanged bytes mean no write and no reload. A config
the validator refuses never reaches the live folder; a config the proxy fails to reload is
rolled back to the last good files. Templates refer to sibling files by relative paths, so
the same text validates in the staging folder and works live.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.errors import ReloadFailed, ValidationFailed
from agent.metrics import PROXY_RELOADS
from common.fsutil import atomic_write

log = logging.getLogger(__name__)

# "file.cfg:12" or "[/path/file.cfg:12]" as both nginx and HAProxy print them.
_LOCATION_RE = re.compile(r"([^\s\[\]'\"():]+):(\d+)")
_CONTEXT_LINES = 2


@dataclass(frozen=True)
class ApplyResult:
    changed: bool  # the rendered files differ from the live ones
    applied: bool  # the live files now hold the new text and the reload succeeded
    error: str | None  # the validator's (or reload's) message, with the offending lines


class ConfigApplier:
    """Owns one live config folder (e.g. state_dir/haproxy/conf) and its staging/last-good."""

    def __init__(
        self,
        live_dir: Path,
        main_file: str,
        *,
        validate: Callable[[Path], None],
        reload: Callable[[], None],
    ) -> None:
        self.live_dir = Path(live_dir)
        self.main_file = main_file
        self.staging_dir = self.live_dir.parent / f"{self.live_dir.name}.staging"
        self.last_good_dir = self.live_dir.parent / f"{self.live_dir.name}.last-good"
        self._validate = validate
        self._reload = reload
        self._validated: dict[str, str] | None = None  # what `check` last accepted

    @property
    def main_path(self) -> Path:
        return self.live_dir / self.main_file

    def check(self, files: Mapping[str, str]) -> ApplyResult:
        """Stage `files` and validate them with the real binary, changing nothing live:
        `applied` says whether they would be accepted. A caller about to change the running
        proxy at runtime asks first, so a config the proxy would refuse never serves; the
        `apply` of the same files that follows does not validate them again."""
        if not self._changed(files):
            return ApplyResult(changed=False, applied=True, error=None)
        return self._stage_and_validate(files)

    def apply(self, files: Mapping[str, str], *, reload: bool = True) -> ApplyResult:
        """Make `files` (name relative to live_dir -> text) live, or keep the last good config.

        Live files not named in `files` are left alone (never deleted). `reload=False`: the
        running proxy already has this config (HAProxy's runtime API applied it); the files
        are validated and swapped so a later reload keeps it, without reloading now.
        """
        changed = self._changed(files)
        if not changed:
            log.info("%s unchanged, skipped reload", self.main_path)
            return ApplyResult(changed=False, applied=True, error=None)
        if self._validated != dict(files):  # not just checked by `check`
            checked = self._stage_and_validate(files)
            if not checked.applied:
                return checked
        self._validated = None  # the live files change now
        self._save_last_good(changed)
        for name, text in changed.items():
            atomic_write(self.live_dir / name, text)
        if not reload:
            PROXY_RELOADS.labels("runtime").inc()
            log.info("wrote %s (%s), already live: no reload", self.main_path, ", ".join(changed))
            return ApplyResult(changed=True, applied=True, error=None)
        try:
            self._reload()
        except ReloadFailed as exc:
            message = f"reload failed: {exc}"
            log.error("%s; restoring the last good config", message)
            self._restore_last_good(changed)
            try:
                self._reload()
            except ReloadFailed as again:
                message += f"; reload of the restored config failed too: {again}"
                log.error("reload of the restored config failed too: %s", again)
            PROXY_RELOADS.labels("failed").inc()
            return ApplyResult(changed=True, applied=False, error=message)
        PROXY_RELOADS.labels("reloaded").inc()
        log.info("applied new %s (%s)", self.main_path, ", ".join(sorted(changed)))
        return ApplyResult(changed=True, applied=True, error=None)

    def _changed(self, files: Mapping[str, str]) -> dict[str, str]:
        """The files whose text differs from the live one (names checked first)."""
        for name in files:
            _check_relative(name)
        if self.main_file not in files:
            raise ValueError(f"the files to apply must include the main file {self.main_file}")
        return {name: text for name, text in files.items() if self._live_text(name) != text}

    def _stage_and_validate(self, files: Mapping[str, str]) -> ApplyResult:
        self._validated = None
        self._stage(files)
        try:
            self._validate(self.staging_dir / self.main_file)
        except ValidationFailed as exc:
            message = _with_offending_lines(str(exc), self.staging_dir)
            log.error(
                "validation of %s failed, kept the last good config: %s", self.main_path, message
            )
            PROXY_RELOADS.labels("failed").inc()
            return ApplyResult(changed=True, applied=False, error=message)
        self._validated = dict(files)
        return ApplyResult(changed=True, applied=True, error=None)

    # ---- files ------------------------------------------------------------------------

    def _live_text(self, name: str) -> str | None:
        try:
            return (self.live_dir / name).read_text()
        except FileNotFoundError:
            return None

    def _stage(self, files: Mapping[str, str]) -> None:
        """A fresh staging folder: a copy of the live files, overwritten with the new ones."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        if self.live_dir.is_dir():
            shutil.copytree(self.live_dir, self.staging_dir, symlinks=True)
        else:
            self.staging_dir.mkdir(parents=True)
        for name, text in files.items():
            path = self.staging_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def _save_last_good(self, changed: Mapping[str, str]) -> None:
        """Copy the live versions of the files about to change (those that exist)."""
        shutil.rmtree(self.last_good_dir, ignore_errors=True)
        self.last_good_dir.mkdir(parents=True)
        for name in changed:
            live = self.live_dir / name
            if live.is_file():
                target = self.last_good_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(live, target)

    def _restore_last_good(self, changed: Mapping[str, str]) -> None:
        for name in changed:
            saved = self.last_good_dir / name
            if saved.is_file():
                atomic_write(self.live_dir / name, saved.read_text())
            else:
                (self.live_dir / name).unlink(missing_ok=True)


def _check_relative(name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"config file name {name!r} must be a plain relative path")


def _with_offending_lines(message: str, staging_dir: Path) -> str:
    """Append the staged lines a validator message points at, so the report shows them."""
    excerpts: list[str] = []
    seen: set[tuple[str, int]] = set()
    for match in _LOCATION_RE.finditer(message):
        raw_path, line_text = match.group(1), match.group(2)
        path = Path(raw_path)
        if not path.is_absolute():
            path = staging_dir / path
        key = (str(path), int(line_text))
        if key in seen or not _inside(path, staging_dir) or not path.is_file():
            continue
        seen.add(key)
        lines = path.read_text(errors="replace").splitlines()
        number = int(line_text)
        first, last = max(1, number - _CONTEXT_LINES), min(len(lines), number + _CONTEXT_LINES)
        excerpts.append(f"{path.name} around line {number}:")
        for index in range(first, last + 1):
            marker = ">" if index == number else " "
            excerpts.append(f"{marker}{index:5d} | {lines[index - 1]}")
        if len(seen) >= 5:
            break
    return message if not excerpts else message.rstrip() + "\n" + "\n".join(excerpts)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
