"""Pure template rendering: (view model, templates) -> text. No I/O besides loading templates.

Templates only format; every decision is made in a typed view model before rendering, and
StrictUndefined turns a missing value into an error instead of an empty string in a config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2

from agent.errors import RenderError


def default_template_dir() -> Path:
    """<package>/templates when installed from a wheel, else <repo>/templates."""
    packaged = Path(__file__).resolve().parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def make_environment(template_dirs: Sequence[Path]) -> jinja2.Environment:
    """A Jinja environment that looks in `template_dirs` in order (operator overrides first).

    No template cache: every render searches the folders again, so an override an operator
    adds, fixes or removes while the agent runs is used by the next render (renders are rare
    and the templates small)."""
    return jinja2.Environment(
        cache_size=0,
        loader=jinja2.FileSystemLoader([str(path) for path in template_dirs]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # proxy configs, not HTML; values are validated by the view models
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def template_dirs(operator_dir: Path | None) -> list[Path]:
    """The search path: the operator's directory (when set) before the default templates."""
    dirs = [operator_dir] if operator_dir is not None else []
    return [*dirs, default_template_dir()]


def render(env: jinja2.Environment, name: str, view: Mapping[str, object]) -> str:
    """Render template `name` with `view`; template errors become RenderError."""
    try:
        return env.get_template(name).render(**view)
    except jinja2.TemplateError as exc:
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise RenderError(f"template {name} failed{where}: {exc}") from exc
