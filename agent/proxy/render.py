"""Pure template rendering: (view model, templates) -> text. No I/O besides loading templates.

Templates only format; every decision is made in a typed view model before rendering, and
StrictUndefined turns a missing value into an error instead of an empty string in a config.

Templates are operator input rendered by a root process, so they get no more power than
formatting needs: every template (built-in or override) renders in Jinja's immutable sandbox
(no underscore attributes, no mutating calls; a violation is a RenderError like any other),
and an override folder is used only while it and every file in it belong to root (or the
agent's own uid) and are writable by nobody else, with no ancestor folder writable by
another user (sticky folders such as /tmp excepted). An unsafe folder stops the agent at
start; a template that becomes unsafe later is refused at render (the last good config stays).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jinja2
import jinja2.bccache
import jinja2.sandbox

from agent.errors import RenderError

log = logging.getLogger(__name__)

TEMPLATE_SUFFIX = ".j2"


class UnsafeTemplates(RenderError):
    """An operator template folder or file another user could have written."""


def default_template_dir() -> Path:
    """<package>/templates when installed from a wheel, else <repo>/templates."""
    agent_dir = Path(__file__).resolve().parents[1]
    packaged = agent_dir / "templates"
    if packaged.is_dir():
        return packaged
    return agent_dir.parent / "templates"


def _trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def unsafe_reason(path: Path, *, folder: bool = False) -> str | None:
    """Why `path` (followed through symlinks) may hold text another user wrote, or None.

    The file itself must be owned by a trusted uid and not group/other-writable; so must every
    folder from it up to /, except that a sticky folder (/tmp) may be world-writable, since
    there only an entry's owner can rename or replace it."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        return f"{path}: cannot be resolved ({exc})"
    trusted = _trusted_uids()
    chain = [resolved, *resolved.parents]
    for index, item in enumerate(chain):
        try:
            info = item.stat()
        except OSError as exc:
            return f"{item}: {exc.strerror or exc}"
        if info.st_uid not in trusted:
            return f"{item} is owned by uid {info.st_uid}, not root or the agent"
        writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        is_leaf = index == 0
        if writable and (is_leaf or not info.st_mode & stat.S_ISVTX):
            what = "folder" if (folder or not is_leaf) else "file"
            return f"{what} {item} is writable by group or others (mode {info.st_mode & 0o7777:o})"
    return None


def check_template_dir(folder: Path) -> list[str]:
    """The templates `folder` overrides (sorted); UnsafeTemplates when it or any file in it
    could have been written by another user."""
    reason = unsafe_reason(folder, folder=True)
    if reason is None:
        for entry in sorted(folder.iterdir()):
            reason = unsafe_reason(entry, folder=entry.is_dir())
            if reason is not None:
                break
    if reason is not None:
        raise UnsafeTemplates(
            f"refusing operator template folder {folder}: {reason}; make it and every file in"
            " it owned by root and writable only by its owner (chmod go-w), or remove it"
        )
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TEMPLATE_SUFFIX))


class TrustedFileSystemLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that re-checks ownership and mode of every file it reads from the
    operator folders (the default templates ship with the agent), so a template made unsafe
    while the agent runs is refused at the next render instead of being rendered as root."""

    def __init__(self, searchpath: Sequence[Path], *, checked: Sequence[Path]) -> None:
        super().__init__([str(path) for path in searchpath])
        self._checked = [Path(path) for path in checked]

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        path = Path(filename)
        if any(path.is_relative_to(folder) for folder in self._checked):
            reason = unsafe_reason(path)
            if reason is not None:
                raise UnsafeTemplates(f"refusing template {template}: {reason}")
        return source, filename, uptodate


class CompiledTemplates(jinja2.BytecodeCache):
    """Compiled templates in memory, by template name, file and a checksum of its text.

    Compiling is most of a render's cost (a tick that renders nginx or HAProxy compiled every
    template again). Each render still finds the file and checks it; the compiled code is
    reused only while the text it was compiled from is exactly the file's text now."""

    def __init__(self) -> None:
        self._compiled: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        compiled = self._compiled.get(bucket.key)
        if compiled is not None:
            bucket.bytecode_from_string(compiled)  # dropped when the checksum differs

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._compiled[bucket.key] = bucket.bytecode_to_string()


def make_environment(
    template_dirs: Sequence[Path], *, operator_dirs: Sequence[Path] | None = None
) -> jinja2.Environment:
    """A sandboxed Jinja environment that looks in `template_dirs` in order (operator
    overrides first). Files found outside the default template folder are checked for
    ownership and mode on every load (`operator_dirs` overrides which folders are checked).

    No template cache: every render searches the folders again, so an override an operator
    adds, fixes or removes while the agent runs is used by the next render. Only the compiling
    is cached (CompiledTemplates), keyed by the text it compiled."""
    if operator_dirs is None:
        default = default_template_dir()
        operator_dirs = [path for path in template_dirs if Path(path) != default]
    return jinja2.sandbox.ImmutableSandboxedEnvironment(
        cache_size=0,
        bytecode_cache=CompiledTemplates(),
        loader=TrustedFileSystemLoader(template_dirs, checked=operator_dirs),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # proxy configs, not HTML; values are validated by the view models
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def template_dirs(operator_dir: Path | None) -> list[Path]:
    """The search path: the operator's directory (when set) before the default templates.

    Called once at agent start: an operator folder that exists but could have been written by
    another user raises UnsafeTemplates (the agent refuses to start with that one line); a
    safe one is logged with the templates it overrides."""
    if operator_dir is None:
        return [default_template_dir()]
    if not operator_dir.exists():  # it may appear later: its files are checked at each load
        return [operator_dir, default_template_dir()]
    overrides = check_template_dir(operator_dir)
    if overrides:
        log.info("operator templates in %s override: %s", operator_dir, ", ".join(overrides))
    else:
        log.info("operator template folder %s overrides no template", operator_dir)
    return [operator_dir, default_template_dir()]


def render(env: jinja2.Environment, name: str, view: Mapping[str, object]) -> str:
    """Render template `name` with `view`; template errors (a sandbox violation included)
    and unsafe template files become RenderError."""
    try:
        return env.get_template(name).render(**view)
    except UnsafeTemplates:
        raise
    except jinja2.TemplateError as exc:
        lineno = getattr(exc, "lineno", None)  # syntax errors carry one
        where = f" (line {lineno})" if lineno else ""
        raise RenderError(f"template {name} failed{where}: {exc}") from exc
