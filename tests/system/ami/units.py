"""Read the image's systemd units the way systemd would, for the few keys the tests use.

The tests cannot boot systemd, so they start each unit's ExecStart themselves: this gives
them the exact argv, environment and user from the unit file, with %i expanded.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Unit:
    name: str
    entries: tuple[tuple[str, str, str], ...]  # (section, key, value)

    def values(self, section: str, key: str) -> list[str]:
        return [v for s, k, v in self.entries if s == section and k == key]

    def value(self, section: str, key: str) -> str | None:
        found = self.values(section, key)
        return found[-1] if found else None

    @property
    def exec_start(self) -> list[str]:
        line = self.value("Service", "ExecStart")
        assert line, f"{self.name} has no ExecStart"
        return shlex.split(line)

    @property
    def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for line in self.values("Service", "Environment"):
            for item in shlex.split(line):
                key, _, value = item.partition("=")
                env[key] = value
        return env

    @property
    def user(self) -> str | None:
        return self.value("Service", "User")


def load_unit(path: Path, *, instance: str | None = None) -> Unit:
    """Parse a unit file; `instance` fills %i (template units: name@.service)."""
    name = path.name if instance is None else path.name.replace("@.", f"@{instance}.")
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if instance is not None:
            value = value.replace("%i", instance)
        entries.append((section, key.strip(), value.replace("%%", "%")))
    return Unit(name=name, entries=tuple(entries))
