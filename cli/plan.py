"""What a change would do to an app's environment, shown before applying it.

`env_diff` is pure; `deploy_plan` and `config_plan` read the registry but change nothing.
Secret values are never shown: a changed secret reads `KEY: ******** (changed)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from cli.api import RegistryClient
from cli.deploy import read_manifest, resolve_app_name
from common.wire import ConfigUpdate

REDACTED = "********"
SECRET_SUFFIXES = ("_SECRET", "_PASSWORD", "_TOKEN", "_KEY")


def is_secret_key(key: str) -> bool:
    """The registry's rule (controller/api/routes/config.py): credential-like names are secret."""
    return key.endswith(SECRET_SUFFIXES) or key in {s.lstrip("_") for s in SECRET_SUFFIXES}


def dependency_key(app: str) -> str:
    return app.upper().replace("-", "_") + "_URL"


def env_diff(old: Mapping[str, str], new: Mapping[str, str], *, secret: Iterable[str]) -> list[str]:
    """`+ KEY=value`, `- KEY`, `~ KEY: old -> new`, sorted by key; secrets redacted."""
    hidden = set(secret)
    lines: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if before is None:
            shown = REDACTED if key in hidden else repr(after)
            lines.append(f"+ {key}={shown}")
        elif after is None:
            lines.append(f"- {key}")
        elif key in hidden:
            lines.append(f"~ {key}: {REDACTED} (changed)")
        else:
            lines.append(f"~ {key}: {before!r} -> {after!r}")
    return lines


def config_plan(api: RegistryClient, app: str, update: ConfigUpdate) -> list[str]:
    """The env diff `paas config:set/unset` would make (secret values compared, not shown)."""
    current = api.get_config(app, reveal=True)
    old = dict(current.vars)
    new = {k: v for k, v in old.items() if k not in set(update.unset)}
    new.update(update.set)
    secret = set(current.secret) | set(update.secret) | {k for k in new if is_secret_key(k)}
    return env_diff(old, new, secret=secret)


def deploy_plan(api: RegistryClient, root: Path, *, app: str | None = None) -> list[str]:
    """The env diff deploying ROOT would make: dependency endpoints (<NAME>_URL) today."""
    name = resolve_app_name(root, app)
    manifest = read_manifest(root)
    found = api.find_app(name)
    lines: list[str] = []
    if found is None:
        lines.append(f"app {name} does not exist yet: the deploy creates it")
    current = list(found.depends_on) if found is not None else []
    wanted = manifest.depends_on if manifest.depends_on is not None else current
    old, new = {}, {}
    for dep in sorted(set(current) | set(wanted)):
        other = api.find_app(dep)
        if other is None or other.service_port is None:
            if dep in wanted:
                lines.append(f"! {name} depends on {dep}, which does not exist: refused")
            continue
        url = f"http://127.0.0.1:{other.service_port}"
        if dep in current:
            old[dependency_key(dep)] = url
        if dep in wanted:
            new[dependency_key(dep)] = url
    diff = env_diff(old, new, secret=())
    lines.extend(diff or ["environment unchanged (config vars are kept as they are)"])
    return lines
