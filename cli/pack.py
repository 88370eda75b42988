"""Pack an app folder into a deterministic .tar.gz: the same tree always gives the same sha256.

Entries are sorted, owners and times zeroed, modes normalised, and the gzip header carries
no name or time. `.gitignore` and `.paasignore` (gitwildmatch) at the folder root are
honoured; `.git/`, `.venv/` and `__pycache__/` are always skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cli.errors import PackError
from common.manifest import ManifestError, parse_procfile, procfile_notices, require_web

if TYPE_CHECKING:
    import pathspec

ALWAYS_SKIP = (".git/", ".venv/", "__pycache__/")
IGNORE_FILES = (".gitignore", ".paasignore")
PYTHON_VERSION_FILES = ("runtime.txt", ".python-version")


@dataclass(frozen=True)
class Packed:
    path: Path  # a temporary .tar.gz; the caller removes it
    sha256: str
    size: int
    files: list[str]
    notices: list[str] = field(default_factory=list)  # what of the app will not be used, why


def ignore_spec(root: Path) -> pathspec.GitIgnoreSpec:
    import pathspec  # only `paas deploy` packs: the other commands start without it

    lines: list[str] = list(ALWAYS_SKIP)
    for name in IGNORE_FILES:
        file = root / name
        if file.is_file():
            lines.extend(file.read_text(errors="replace").splitlines())
    return pathspec.GitIgnoreSpec.from_lines(lines)


def check_procfile(root: Path) -> dict[str, str]:
    procfile = root / "Procfile"
    if not procfile.is_file():
        raise PackError(
            f"no Procfile in {root}: add one with a line like `web: gunicorn app:app` or"
            " `web: uvicorn main:app --host 0.0.0.0 --port $PORT` (the app must listen on $PORT)"
        )
    try:
        return require_web(parse_procfile(procfile.read_text(errors="replace")))
    except ManifestError as exc:
        raise PackError(f"{exc} (in {procfile})") from exc


def app_notices(root: Path, processes: dict[str, str]) -> list[str]:
    """What a Heroku-style app carries that will not be used, so the user is not surprised."""
    notices = procfile_notices(processes)
    for name in PYTHON_VERSION_FILES:
        if (root / name).is_file():
            notices.append(
                f"{name}: not read; apps run on the hosts' Python (the venv is built with it)"
            )
    if (root / "requirements.txt").is_file():
        return notices
    project, poetry = _pyproject_dependencies(root / "pyproject.toml")
    if project:
        return notices
    if poetry:
        notices.append(
            "pyproject.toml: [tool.poetry.dependencies] is not read, only [project].dependencies"
            " or requirements.txt: nothing will be installed (`poetry export -o requirements.txt`)"
        )
    elif any((root / name).is_file() for name in ("Pipfile", "poetry.lock", "setup.py")):
        notices.append(
            "no requirements.txt or pyproject.toml [project].dependencies: nothing will be"
            " installed (export one, e.g. `pip freeze > requirements.txt`)"
        )
    return notices


def _pyproject_dependencies(path: Path) -> tuple[bool, bool]:
    """(has [project].dependencies, has Poetry dependencies besides python); unreadable: no."""
    try:
        data = tomllib.loads(path.read_text()) if path.is_file() else {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
        return False, False  # the installer reports a broken pyproject.toml with its reason
    project = data.get("project", {})
    poetry = data.get("tool", {}).get("poetry", {})
    deps = poetry.get("dependencies", {}) if isinstance(poetry, dict) else {}
    has_project = isinstance(project, dict) and bool(project.get("dependencies"))
    return has_project, isinstance(deps, dict) and any(k != "python" for k in deps)


def collect(root: Path) -> list[str]:
    """Relative POSIX paths to pack, sorted; directories end with '/'."""
    spec = ignore_spec(root)
    real_root = root.resolve()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        kept_dirs = []
        for name in sorted(dirnames):
            rel = prefix + name
            full = Path(dirpath) / name
            if full.is_symlink():
                filenames.append(name)  # packed as a link, never followed
                continue
            if spec.match_file(rel + "/"):
                continue
            kept_dirs.append(name)
            found.append(rel + "/")
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            rel = prefix + name
            if spec.match_file(rel):
                continue
            full = Path(dirpath) / name
            if full.is_symlink():
                _check_link(full, real_root, rel)
            elif not full.is_file():
                continue  # sockets, fifos: not part of an app
            found.append(rel)
    return sorted(found)


def _check_link(link: Path, real_root: Path, rel: str) -> None:
    target = os.readlink(link)
    resolved = (link.parent / target).resolve()
    if os.path.isabs(target) or not resolved.is_relative_to(real_root):
        raise PackError(f"refusing to pack {rel}: it is a symlink to {target}, outside the folder")


def _tarinfo(root: Path, rel: str) -> tuple[tarfile.TarInfo, Path | None]:
    full = root / rel.rstrip("/")
    info = tarfile.TarInfo(rel.rstrip("/"))
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    st = full.lstat()
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(full)
        info.mode = 0o777
        return info, None
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        return info, None
    info.size = st.st_size
    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
    return info, full


def pack(root: Path, *, workdir: Path | None = None) -> Packed:
    """Check the Procfile, then write the archive to a temp file and hash it."""
    root = Path(root)
    if not root.is_dir():
        raise PackError(f"{root} is not a folder")
    notices = app_notices(root, check_procfile(root))
    entries = collect(root)
    fd, name = tempfile.mkstemp(prefix="paas-", suffix=".tar.gz", dir=workdir)
    path = Path(name)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for rel in entries:
                info, source = _tarinfo(root, rel)
                if source is None:
                    tar.addfile(info)
                else:
                    with source.open("rb") as fh:
                        tar.addfile(info, fh)
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 16), b""):
                digest.update(block)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise PackError(f"cannot pack {root}: {exc}") from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    size = path.stat().st_size
    return Packed(path=path, sha256=digest.hexdigest(), size=size, files=entries, notices=notices)


def list_archive(path: Path) -> list[str]:
    """Names inside an archive (for tests and `--dry-run`-style inspection)."""
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes()), mode="r:gz") as tar:
        return tar.getnames()
