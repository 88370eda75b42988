"""Artifact -> unpacked release -> cached virtualenv: everything an instance needs to start.

Releases are cached by app and version (state_dir/apps/<app>/releases/<version>/), venvs by
the hash of their dependencies (state_dir/venvs/<key>/), so a code-only redeploy unpacks the
new code and reuses the venv without running an installer. Every folder is built under a temp
name and renamed into place, so a crash or a concurrent install never leaves half a folder.

Every failure is an InstallError whose message the registry shows as the release's reason:
the installer's last lines (they name the requirement that could not be installed), or
"no space left on the agent's disk ..." when the disk is full; what was half-written is
removed, and nothing is used later unless it was completed and verified.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import platform
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent import archive, procs
from agent.errors import InstallError, UnsafeArchive
from common.names import check_app_name, check_sha256

log = logging.getLogger(__name__)

Download = Callable[[str, Path], Awaitable[None]]  # (sha256, dest) -> file at dest, verified

INSTALL_TIMEOUT_S = 600.0
VENV_TIMEOUT_S = 120.0
TAIL_LINES = 20
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


@dataclass(frozen=True)
class InstalledRelease:
    app: str
    version: int
    path: Path  # the unpacked release: the instance's cwd
    venv: Path  # its virtualenv (bin/python, bin/<scripts>)


@dataclass(frozen=True)
class EnvironmentSpec:
    """What a release's venv must contain; `key` names the cached venv."""

    key: str
    requirements: str | None  # requirements-file text to install, None for an empty venv
    # The app's own requirements file, installed in place (cwd = its folder) so that its
    # relative `-r base.txt`, `-c constraints.txt`, `./wheels/x.whl` lines resolve.
    source: Path | None = None


def environment_spec(release_dir: Path, *, python_version: str | None = None) -> EnvironmentSpec:
    """requirements.txt wins, then [project].dependencies of pyproject.toml, else an empty venv.

    The app itself is never installed: it runs from its folder.
    """
    version = python_version or _python_identity()
    requirements_file = release_dir / "requirements.txt"
    if requirements_file.is_file():
        text = requirements_file.read_text()
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
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text())
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
        for line in current.read_text(errors="replace").splitlines():
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
            texts += [target.relative_to(root).as_posix(), target.read_text(errors="replace")]
    return texts


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


def _python_identity() -> str:
    return f"{platform.python_implementation()}-{platform.python_version()}-{sys.executable}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def find_uv() -> str | None:
    """`uv` on PATH, else next to the running interpreter (installed into our venv)."""
    found = shutil.which("uv")
    if found:
        return found
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


class Installer:
    """Installs releases under `state_dir`; safe to call concurrently for the same release."""

    def __init__(
        self,
        state_dir: Path,
        download: Download,
        *,
        python: str = sys.executable,
        timeout_s: float = INSTALL_TIMEOUT_S,
    ) -> None:
        self.state_dir = state_dir
        self._download = download
        self._python = python
        self._timeout_s = timeout_s
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def venvs_dir(self) -> Path:
        return self.state_dir / "venvs"

    def release_dir(self, app: str, version: int) -> Path:
        check_app_name(app)
        return self.state_dir / "apps" / app / "releases" / str(int(version))

    async def install(self, *, app: str, version: int, sha256: str) -> InstalledRelease:
        """Download (cached by sha), unpack (cached by app+version), build or reuse the venv."""
        check_sha256(sha256)
        try:
            artifact = await self._fetch(sha256)
        except OSError as exc:
            raise self._failure(exc, f"storing artifact {sha256[:12]}") from exc
        release = self.release_dir(app, version)
        async with self._lock(f"release:{release}"):
            if not _release_matches(release, sha256):
                try:
                    await asyncio.to_thread(_unpack_release, artifact, release, sha256)
                except (OSError, UnsafeArchive) as exc:
                    if not _no_space(exc) and isinstance(exc, InstallError):
                        raise
                    raise self._failure(exc, f"unpacking release {version} of {app}") from exc
                log.info("unpacked %s release %d into %s", app, version, release)
        spec = await asyncio.to_thread(environment_spec, release)
        venv = self.venvs_dir / spec.key
        async with self._lock(f"venv:{spec.key}"):
            if _venv_ready(venv):
                log.info("%s release %d reuses venv %s", app, version, spec.key)
            else:
                log.info("%s release %d needs venv %s, building it", app, version, spec.key)
                try:
                    await asyncio.to_thread(self._build_venv, venv, spec)
                except (OSError, InstallError) as exc:
                    if isinstance(exc, InstallError) and not _no_space(exc):
                        raise
                    raise self._failure(exc, "building the environment") from exc
        return InstalledRelease(app=app, version=version, path=release, venv=venv)

    def _failure(self, exc: BaseException, doing: str) -> InstallError:
        if _no_space(exc):
            log.error("no space left in %s while %s", self.state_dir, doing)
            return InstallError(
                f"no space left on the agent's disk ({self.state_dir}) while {doing};"
                f" nothing half-written was kept. Free some space and deploy again.\n{exc}"
            )
        return InstallError(f"{doing} failed: {exc}")

    async def _fetch(self, sha256: str) -> Path:
        path = self.artifacts_dir / f"{sha256}.tar.gz"
        async with self._lock(f"artifact:{sha256}"):
            if path.is_file() and await asyncio.to_thread(_sha256_of, path) == sha256:
                return path
            path.unlink(missing_ok=True)
            log.info("downloading artifact %s", sha256[:12])
            await self._download(sha256, path)
        return path

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # ---- venvs (blocking; run in a thread) ----------------------------------------------

    def _build_venv(self, venv: Path, spec: EnvironmentSpec) -> None:
        venv.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{venv.name}.", suffix=".build", dir=venv.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; apps may run as another user (run_as_user)
        try:
            # Built under a temp name, so the shebangs of console scripts name the temp
            # folder: rewrite them to the final path before the rename.
            self._create(tmp, spec)
            _fix_script_paths(tmp, venv)
            try:
                os.rename(tmp, venv)
            except OSError:
                if not _venv_ready(venv):
                    raise
                log.info("venv %s was built concurrently, using that one", venv.name)
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _create(self, target: Path, spec: EnvironmentSpec) -> None:
        uv = find_uv()
        env = {**os.environ, "VIRTUAL_ENV": str(target)}
        env.pop("PYTHONHOME", None)
        python = str(target / "bin" / "python")
        # Beside the venv, not in it: `uv venv` wants an empty folder.
        requirements = target.with_name(f"{target.name}.requirements.txt")
        source = spec.source if spec.source is not None else requirements
        if uv:
            steps = [[uv, "venv", "--quiet", "--python", self._python, str(target)]]
            install = [uv, "pip", "install", "--python", python, "-r", str(source)]
        else:
            steps = [[self._python, "-m", "venv", str(target)]]
            install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            install += ["-r", str(source)]
        if spec.requirements is not None and spec.source is None:
            requirements.write_text(spec.requirements)
        if spec.requirements is not None:
            steps.append(install)
        output: list[str] = []
        try:
            for argv in steps:
                try:
                    cwd = source.parent if argv is install and spec.source is not None else None
                    result = procs.run(argv, timeout_s=self._timeout_s, env=env, cwd=cwd)
                    output.append(result.output)
                except procs.ProcessError as exc:
                    output.append(exc.output)
                    text = "\n".join(output).strip()
                    # uv's "Using Python 3.11 environment at: <temp folder>" says nothing useful.
                    kept = [ln for ln in text.splitlines() if not ln.startswith("Using Python ")]
                    lines = "\n".join(kept[-TAIL_LINES:])
                    doing = (
                        "installing the requirements" if argv is install else "creating the venv"
                    )
                    what = str(exc).replace(argv[0], Path(argv[0]).name)
                    raise InstallError(f"{doing} failed ({what}):\n{lines}") from exc
        finally:
            requirements.unlink(missing_ok=True)


def _fix_script_paths(built: Path, final: Path) -> None:
    """Rewrite the temp path baked into activate scripts and console-script shebangs."""
    old, new = str(built).encode(), str(final).encode()
    bin_dir = built / "bin"
    for path in bin_dir.iterdir() if bin_dir.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if old in data and b"\x00" not in data[:1024]:
            mode = path.stat().st_mode
            path.write_bytes(data.replace(old, new))
            os.chmod(path, mode)
    cfg = built / "pyvenv.cfg"
    if cfg.is_file():
        cfg.write_bytes(cfg.read_bytes().replace(old, new))


def _no_space(exc: BaseException) -> bool:
    """A full disk anywhere in the chain of causes, or in an installer's output."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return True
        if isinstance(seen, InstallError) and any(t in str(seen) for t in NO_SPACE_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _venv_ready(venv: Path) -> bool:
    return (venv / "bin" / "python").exists() and (venv / "pyvenv.cfg").is_file()


def _release_matches(release: Path, sha256: str) -> bool:
    marker = release / ".paas-artifact"
    return marker.is_file() and marker.read_text().strip() == sha256


def _unpack_release(artifact: Path, release: Path, sha256: str) -> None:
    staged = release.with_name(f".{release.name}.{os.getpid()}.staged")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        archive.unpack(artifact, staged)
        # The marker is what makes a release folder usable (`_release_matches`): written last.
        (staged / ".paas-artifact").write_text(sha256 + "\n")
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if release.exists():
        # Same version, different artifact (a re-created registry): replace it.
        old = release.with_name(f".{release.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(release, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(staged, release)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
