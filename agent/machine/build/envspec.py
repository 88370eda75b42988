"""What a release's virtualenv must contain, and the key its cached venv goes by.

requirements.txt wins (with every file it includes by -r/-c, all inside the release), then
[project].dependencies of pyproject.toml, else an empty venv. Everything is read without
following a symlink; the installer computes the spec while the unpacked release is still
the agent's alone and keeps it root-only (`SavedSpec`), so it never reads the app-owned
copy as root later.
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agent.errors import InstallError


@dataclass(frozen=True)
class EnvironmentSpec:
    """What a release's venv must contain; `key` names the cached venv."""

    key: str
    requirements: str | None  # requirements-file text to install, None for an empty venv
    # The app's own requirements file, installed in place (cwd = its folder) so that its
    # relative `-r base.txt`, `-c constraints.txt`, `./wheels/x.whl` lines resolve.
    source: Path | None = None


class SavedSpec(BaseModel):
    """An EnvironmentSpec computed while the release was still the agent's alone (staging),
    so that later installs never read the app-owned copy as root to decide on its venv."""

    model_config = ConfigDict(extra="forbid")

    sha256: str
    key: str
    requirements: str | None
    source: str | None  # relative to the release folder

    def spec(self, release: Path) -> EnvironmentSpec:
        source = release / self.source if self.source is not None else None
        return EnvironmentSpec(key=self.key, requirements=self.requirements, source=source)


def environment_spec(release_dir: Path, *, python_version: str | None = None) -> EnvironmentSpec:
    """requirements.txt wins, then [project].dependencies of pyproject.toml, else an empty venv.

    The app itself is never installed: it runs from its folder.
    """
    version = python_version or python_identity()
    requirements_file = release_dir / "requirements.txt"
    if requirements_file.is_file() and not requirements_file.is_symlink():
        text = read_text(requirements_file)
        # Included files are part of what gets installed, so part of the venv's key.
        included = _included_texts(release_dir, requirements_file)
        # `-e .` or `./pkg` installs the app's own code: such a venv belongs to one artifact.
        own_code = _artifact_of(release_dir) if _installs_local_code(text, *included) else ""
        return EnvironmentSpec(
            key=_digest(version, "requirements.txt", text, *included, own_code),
            requirements=text,
            source=requirements_file,
        )
    pyproject = release_dir / "pyproject.toml"
    if pyproject.is_file() and not pyproject.is_symlink():
        try:
            data = tomllib.loads(read_text(pyproject))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InstallError(f"pyproject.toml is not valid TOML: {exc}") from exc
        deps = data.get("project", {}).get("dependencies", [])
        if not isinstance(deps, list) or not all(isinstance(dep, str) for dep in deps):
            raise InstallError("pyproject.toml [project].dependencies must be a list of strings")
        if deps:
            text = "".join(f"{dep}\n" for dep in deps)
            return EnvironmentSpec(key=_digest(version, "pyproject", text), requirements=text)
    return EnvironmentSpec(key="none", requirements=None)


_INCLUDE_OPTIONS = ("-r", "-c", "--requirement", "--constraint")
MAX_INCLUDES = 50


def _included_texts(release_dir: Path, first: Path) -> list[str]:
    """Name + text of every file `first` pulls in with -r/-c, recursively, inside the release.

    A reference that leaves the release folder or does not exist is an InstallError naming
    the line, rather than an installer failing later with a path the user never wrote."""
    root = release_dir.resolve()
    seen: set[Path] = {first.resolve()}
    queue, texts = [first], []
    while queue:
        current = queue.pop(0)
        for line in read_text(current).splitlines():
            ref = _include_target(line)
            if ref is None:
                continue
            target = (current.parent / ref).resolve()
            if not target.is_relative_to(root) or not target.is_file():
                raise InstallError(
                    f"{current.relative_to(release_dir)}: {line.strip()!r} names a file that is"
                    " not in the app folder"
                )
            if target in seen:
                continue
            if len(seen) >= MAX_INCLUDES:
                raise InstallError(f"requirements include more than {MAX_INCLUDES} files")
            seen.add(target)
            queue.append(target)
            texts += [target.relative_to(root).as_posix(), read_text(target)]
    return texts


def read_text(path: Path) -> str:
    """A file of the app's, never through a symlink (the app's uid owns the folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise InstallError(f"could not read {path.name}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise InstallError(f"{path.name} is not a regular file")
        return handle.read(1 << 20).decode(errors="replace")


_LOCAL_PREFIXES = ("-e", "--editable", ".", "/", "file:")


def _installs_local_code(*texts: str) -> bool:
    """A requirement line naming a local path (`-e .`, `./libs/x`, `pkg @ file:...`)."""
    for text in texts:
        for raw in text.splitlines():
            line = raw.split(" #", 1)[0].strip()
            if line.startswith(_LOCAL_PREFIXES) or "@ file:" in line:
                return True
    return False


def _artifact_of(release_dir: Path) -> str:
    marker = release_dir / ".paas-artifact"
    return marker.read_text().strip() if marker.is_file() else str(release_dir)


def _include_target(line: str) -> str | None:
    """`-r base.txt`, `--requirement=base.txt`, `-rbase.txt` -> `base.txt`; else None."""
    text = line.split(" #", 1)[0].strip()
    for option in _INCLUDE_OPTIONS:
        if text.startswith(option):
            rest = text[len(option) :]
            if rest[:1] in (" ", "=", "\t") or (len(option) == 2 and rest):
                return rest.lstrip(" =\t") or None
    return None


def python_identity(python: str | None = None) -> str:
    return (
        f"{platform.python_implementation()}-{platform.python_version()}-{python or sys.executable}"
    )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]
