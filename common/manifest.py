"""Parsing of an app's `Procfile` and `paas.toml`: pure functions over text.

Shared by the registry (which reads them from the uploaded artifact) and the CLI (which checks
them before packing), so both reject the same mistakes with the same message.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

from common.names import (
    InvalidName,
    check_app_name,
    check_domain,
    check_health_path,
    check_label,
    check_process_type,
)

MAX_INSTANCES = 100  # per process type (paas.toml instances, `paas ps:scale`)
MAX_PROCESS_TYPES = 16  # Procfile lines; each type is at least one process on some host
MAX_MANIFEST_DEPTH = 32  # nested arrays/tables in paas.toml; tomllib recurses per level
DEFAULT_HEALTH_TIMEOUT_S = 30.0  # a new instance must pass its health check within this
MIN_HEALTH_TIMEOUT_S = 1.0
MAX_HEALTH_TIMEOUT_S = 3600.0
# Health checks: a running instance's check that gets no answer within
# health_check_timeout while its process lives and listens is "busy"; it leaves the proxy only
# after health_threshold failed checks in a row (a refused connection: at once).
DEFAULT_HEALTH_CHECK_TIMEOUT_S = 5.0
MIN_HEALTH_CHECK_TIMEOUT_S = 0.5
MAX_HEALTH_CHECK_TIMEOUT_S = 300.0
DEFAULT_HEALTH_THRESHOLD = 3
MAX_HEALTH_THRESHOLD = 100
# A new release's instances must stay healthy this long before the previous release's
# instances are stopped (Nomad's min_healthy_time); 0 switches as soon as they are healthy.
DEFAULT_MIN_HEALTHY_S = 10.0
MAX_MIN_HEALTHY_S = 3600.0


class ManifestError(ValueError):
    """A Procfile or paas.toml is malformed; the message says what and where."""


@dataclass(frozen=True)
class Manifest:
    """What `paas.toml` may declare; None means "not declared, keep the app's value"."""

    health_path: str | None = None
    health_timeout: float | None = None  # seconds; None: the app's (or the default) value
    health_check_timeout: float | None = None  # seconds; None: keep the app's
    health_threshold: int | None = None  # failed checks in a row; None: keep the app's
    name: str | None = None  # the app name `paas deploy` uses; the registry only checks it
    instances: int | None = None
    domains: list[str] = field(default_factory=list)
    depends_on: list[str] | None = None  # apps this one calls; None: keep the app's list
    constraints: dict[str, str] | None = None  # host labels required; None: keep the app's
    memory_mb: int | None = None  # memory = "256M" per instance; placement keeps hosts within it
    min_healthy_s: float | None = None  # seconds healthy before the switch; None: keep the app's
    auto_rollback: bool | None = None  # roll back a crash-looping release; None: keep the app's
    # data = true: the app keeps data in PAAS_DATA_DIR, so it is pinned to the host that
    # holds it (placement never moves it); None: keep the app's.
    data: bool | None = None


def parse_procfile(text: str) -> dict[str, str]:
    """`type: command` lines -> {type: command}; comments and blank lines are ignored."""
    processes: dict[str, str] = {}
    text = text.removeprefix("\ufeff")  # editors on Windows start the file with a BOM
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, sep, command = line.partition(":")
        kind, command = kind.strip(), command.strip()
        if not sep or not command:
            raise ManifestError(f"Procfile line {number}: expected 'type: command', got {raw!r}")
        try:
            check_process_type(kind)
        except InvalidName as exc:
            raise ManifestError(f"Procfile line {number}: {exc}") from None
        if "\x00" in command:
            raise ManifestError(f"Procfile line {number}: the command contains a NUL byte")
        if kind in processes:
            raise ManifestError(f"Procfile line {number}: process type {kind!r} appears twice")
        if len(processes) >= MAX_PROCESS_TYPES:
            raise ManifestError(
                f"Procfile line {number}: more than {MAX_PROCESS_TYPES} process types;"
                f" an app may declare at most {MAX_PROCESS_TYPES}"
            )
        processes[kind] = command
    return processes


def require_web(processes: dict[str, str]) -> dict[str, str]:
    """A release must have a `web` process: it is what the proxies route to."""
    if "web" not in processes:
        raise ManifestError("Procfile has no web process (add a line 'web: <command>')")
    return processes


# Every Procfile type other than these runs as worker instances (no port, no routing).
NOT_WORKER_TYPES = ("web", "release")
DEFAULT_WORKER_COUNT = 1  # Heroku starts 0 of a non-web type; 1 makes `worker:` just work

_RELEASE_NOTICE = (
    "Procfile: 'release' runs once per deploy, on one host, before the new release starts;"
    " if it fails the deploy fails and the previous release keeps running"
)


def worker_types(processes: dict[str, str]) -> list[str]:
    """The Procfile types that run as workers, in Procfile order."""
    return [kind for kind in processes if kind not in NOT_WORKER_TYPES]


def procfile_notices(processes: dict[str, str]) -> list[str]:
    """One line per Procfile process that is not a web process, saying how it is run.

    Ignoring a line silently would leave e.g. a Django app without its migrate step and no
    clue why; a worker runs DEFAULT_WORKER_COUNT instance unless scaled (`paas ps:scale`)."""
    notices = []
    for kind in processes:
        if kind == "web":
            continue
        if kind == "release":
            notices.append(_RELEASE_NOTICE)
        else:
            notices.append(
                f"Procfile: {kind!r} runs as a worker ({DEFAULT_WORKER_COUNT} instance unless"
                f" scaled with `paas ps:scale APP {kind}=N`; no port, no routing)"
            )
    return notices


# name: read by the CLI
_KEYS = {
    "name",
    "health_path",
    "health_timeout",
    "health_check_timeout",
    "health_threshold",
    "instances",
    "domains",
    "depends_on",
    "constraints",
    "memory",
    "min_healthy_s",
    "auto_rollback",
    "data",
}


def parse_manifest(text: str) -> Manifest:
    """Read `paas.toml`: keys under `[app]` or at top level; unknown keys are an error.

    tomllib parses nested arrays and inline tables by recursion, so a deeply nested file
    would raise RecursionError (a 500); nesting is bounded before parsing instead."""
    _check_depth(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"paas.toml is not valid TOML: {exc}") from None
    except RecursionError:  # defence in depth: _check_depth over-approximates already
        raise ManifestError(f"paas.toml nests deeper than {MAX_MANIFEST_DEPTH} levels") from None
    values: dict[str, object] = {}
    for key, value in data.items():
        if key == "app":
            if not isinstance(value, dict):
                raise ManifestError("paas.toml: [app] must be a table")
            for sub_key, sub_value in value.items():
                _put(values, sub_key, sub_value, where="[app].")
        else:
            _put(values, key, value, where="")
    return Manifest(
        name=_name(values.get("name")),
        health_path=_health_path(values.get("health_path")),
        health_timeout=_seconds(
            "health_timeout",
            values.get("health_timeout"),
            low=MIN_HEALTH_TIMEOUT_S,
            high=MAX_HEALTH_TIMEOUT_S,
            example=30,
        ),
        health_check_timeout=_seconds(
            "health_check_timeout",
            values.get("health_check_timeout"),
            low=MIN_HEALTH_CHECK_TIMEOUT_S,
            high=MAX_HEALTH_CHECK_TIMEOUT_S,
            example=5,
        ),
        health_threshold=_health_threshold(values.get("health_threshold")),
        instances=_instances(values.get("instances")),
        domains=_domains(values.get("domains")),
        depends_on=_depends_on(values.get("depends_on"), values.get("name")),
        constraints=_constraints(values.get("constraints")),
        memory_mb=_memory(values.get("memory")),
        min_healthy_s=_seconds(
            "min_healthy_s", values.get("min_healthy_s"), low=0, high=MAX_MIN_HEALTHY_S, example=10
        ),
        auto_rollback=_auto_rollback(values.get("auto_rollback")),
        data=_data(values.get("data")),
    )


def _check_depth(text: str) -> None:
    """Refuse more than MAX_MANIFEST_DEPTH open brackets/braces at once. Brackets inside
    strings count too: an over-estimate, so a file that passes never recurses deeper."""
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > MAX_MANIFEST_DEPTH:
                raise ManifestError(
                    f"paas.toml nests arrays or tables deeper than {MAX_MANIFEST_DEPTH} levels"
                )
        elif char in "]}":
            depth = max(0, depth - 1)


def _put(values: dict[str, object], key: str, value: object, *, where: str) -> None:
    if key not in _KEYS:
        known = ", ".join(sorted(_KEYS))
        raise ManifestError(f"paas.toml: unknown key {where}{key} (known keys: {known})")
    if key in values:
        raise ManifestError(f"paas.toml: {key} is set twice")
    values[key] = value


def _name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ManifestError('paas.toml: name must be a string such as "hello"')
    try:
        return check_app_name(value)
    except InvalidName as exc:
        raise ManifestError(f"paas.toml: {exc}") from None


def _health_path(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ManifestError('paas.toml: health_path must be a string such as "/health"')
    try:
        return check_health_path(value)
    except InvalidName as exc:
        raise ManifestError(f"paas.toml: {exc}") from None


def _seconds(key: str, value: object, *, low: float, high: float, example: int) -> float | None:
    """A number of seconds within [low, high]; None when the key is absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ManifestError(f"paas.toml: {key} must be a number of seconds such as {example}")
    if not low <= value <= high:
        raise ManifestError(f"paas.toml: {key} must be between {low:g} and {high:g} seconds")
    return float(value)


def _health_threshold(value: object) -> int | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_HEALTH_THRESHOLD
    ):
        raise ManifestError(
            f"paas.toml: health_threshold must be a whole number from 1 to {MAX_HEALTH_THRESHOLD}"
            " (failed health checks in a row before an instance is taken out of service)"
        )
    return value


def _auto_rollback(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ManifestError("paas.toml: auto_rollback must be true or false")


def _data(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ManifestError("paas.toml: data must be true or false (true pins the app to its host)")


def _instances(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError("paas.toml: instances must be an integer")
    if not 0 <= value <= MAX_INSTANCES:
        raise ManifestError(f"paas.toml: instances must be between 0 and {MAX_INSTANCES}")
    return value


def _domains(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ManifestError("paas.toml: domains must be a list of strings")
    try:
        return [check_domain(item) for item in value]
    except InvalidName as exc:
        raise ManifestError(f"paas.toml: {exc}") from None


def _depends_on(value: object, own_name: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ManifestError('paas.toml: depends_on must be a list of app names such as ["users"]')
    names: list[str] = []
    for item in value:
        try:
            name = check_app_name(item)
        except InvalidName as exc:
            raise ManifestError(f"paas.toml: depends_on: {exc}") from None
        if name == own_name:
            raise ManifestError(f"paas.toml: app {name} cannot depend on itself")
        if name not in names:
            names.append(name)
    return names


def _constraints(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ManifestError('paas.toml: constraints must be a table such as {zone = "a"}')
    try:
        return {check_label(str(k)): check_label(v) for k, v in value.items()}
    except InvalidName as exc:
        raise ManifestError(f"paas.toml: constraints: {exc}") from None


MAX_MEMORY_MB = 1024 * 1024  # 1 TiB per instance
_MEMORY_RE = re.compile(r"^([1-9][0-9]{0,7})\s?(M|Mi|MB|MiB|G|Gi|GB|GiB)?$")


def _memory(value: object) -> int | None:
    """`"256M"`, `"1G"` or a plain integer of MiB -> MiB."""
    if value is None:
        return None
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    match = _MEMORY_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ManifestError('paas.toml: memory must be a size such as "256M" or "1G"')
    number, unit = int(match.group(1)), (match.group(2) or "M")[0]
    megabytes = number * 1024 if unit == "G" else number
    if megabytes > MAX_MEMORY_MB:
        raise ManifestError(f"paas.toml: memory must be at most {MAX_MEMORY_MB // 1024}G")
    return megabytes
