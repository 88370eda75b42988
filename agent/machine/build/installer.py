"""Artifact -> unpacked release -> cached virtualenv: everything an instance needs to start.

Releases are cached by app and version (state_dir/apps/<app>/releases/<version>/), venvs by
the hash of their dependencies within the app (state_dir/apps/<app>/venvs/<key>/), so a
code-only redeploy unpacks the new code and reuses the venv without running an installer.
Venvs are never shared between apps: what one app's requirements built (its own wheels, its
build backends) can never end up in another app's environment, and each app has its own uv
cache. Every folder is built under a temp name and renamed into place, so a crash or a
concurrent install never leaves half a folder.

Nothing from an artifact runs as the agent: the agent only unpacks (archive.py beside this
module, into a folder only it can read, bounded in size), checks the Procfile against the
process-type cap and hands the release to the app's uid (lchown, never following a link); the
venv is built (`uv venv`, `uv pip install`, with any build backend the requirements pull in)
by the app's own uid (agent/machine/run/uids.py), with a clean environment whose HOME, TMPDIR
and UV_CACHE_DIR are in the app's folder.

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
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent import procs
from agent.errors import InstallError, UnsafeArchive
from agent.link import statefile
from agent.machine.build import archive
from agent.machine.build.envspec import (
    EnvironmentSpec,
    SavedSpec,
    environment_spec,
    python_identity,
    read_text,
)
from agent.machine.build.package_index import PackageIndex, redact
from agent.machine.run.uids import AppFolders, AppUsers
from agent.machine.storage import datadir, disk
from common.manifest import MAX_PROCESS_TYPES, ManifestError, parse_procfile
from common.names import check_app_name, check_sha256

log = logging.getLogger(__name__)

Download = Callable[[str, Path], Awaitable[None]]  # (sha256, dest) -> file at dest, verified

INSTALL_TIMEOUT_S = 600.0
VENV_TIMEOUT_S = 120.0
TAIL_LINES = 20
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")
MAX_UNPACKED_BYTES = 512 << 20
DEFAULT_UID_RANGE = (70000, 79999)
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
# What the agent's environment may pass on to a build (package index, proxy and TLS
# settings); nothing else of it (tokens, PAAS_*) reaches app code.
BUILD_ENV_PREFIXES = ("UV_", "PIP_")
BUILD_ENV_NAMES = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "LANG",
)


@dataclass(frozen=True)
class InstalledRelease:
    app: str
    version: int
    path: Path  # the unpacked release: the instance's cwd
    venv: Path  # its virtualenv (bin/python, bin/<scripts>)
    data: Path | None = None  # the app's data folder (PAAS_DATA_DIR), kept across releases


def app_python(isolated: bool) -> str:
    """The interpreter app venvs are built on. It must be one every app uid can run: ours when
    every folder on its way lets others pass (e.g. /opt/paas/venv), else the system's
    python3 of the same version (ours may live under a 0700 /root, as pyenv's does)."""
    ours = os.path.realpath(sys.executable)
    if not isolated or _others_can_run(ours):
        return sys.executable
    wanted = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in SYSTEM_PYTHONS:
        real = os.path.realpath(candidate)
        if _others_can_run(real) and Path(real).name.endswith(wanted):
            return candidate
    log.warning("no python %s that app users can run was found; using %s", wanted, ours)
    return sys.executable


def _others_can_run(path: str) -> bool:
    target = Path(path)
    try:
        if not target.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in target.parents)
    except OSError:
        return False


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
        users: AppUsers | None = None,
        python: str | None = None,
        timeout_s: float = INSTALL_TIMEOUT_S,
        max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
        build_cgroup: Callable[[str], tuple[Path, ...]] | None = None,
        package_index: PackageIndex | None = None,
        min_free_mb: int = 0,
        min_free_percent: float = 0.0,
    ) -> None:
        self.state_dir = state_dir
        self._download = download
        self.users = users or AppUsers(state_dir, uid_range=DEFAULT_UID_RANGE, isolated=False)
        self._python = python or app_python(self.users.isolated)
        self._timeout_s = timeout_s
        self._max_unpacked_bytes = max_unpacked_bytes
        self._build_cgroup = build_cgroup  # app -> cgroup.procs files for its builds
        self._locks: dict[str, asyncio.Lock] = {}
        self.package_index = package_index or PackageIndex()  # agent/machine/build/package_index.py
        self.min_free_mb = min_free_mb
        self.min_free_percent = min_free_percent
        self.busy: dict[str, int] = {}  # app -> installs under way (GC leaves it alone)
        self.sweep_lock = threading.Lock()  # held by a GC pass (agent/machine/storage/janitor.py)

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    def release_dir(self, app: str, version: int) -> Path:
        return self.users.folders(app).releases / str(int(version))

    def app_user(self, app: str) -> procs.AppUser | None:
        uid = self.users.uid_of(app)
        return procs.AppUser(uid=uid, gid=uid) if uid is not None else None

    async def install(
        self, *, app: str, version: int, sha256: str, app_id: str | None = None
    ) -> InstalledRelease:
        """Download (cached by sha), unpack (cached by app+version), build or reuse the venv;
        the app's data folder is made (and claimed for `app_id`) before anything runs."""
        check_sha256(sha256)
        check_app_name(app)
        self.busy[app] = self.busy.get(app, 0) + 1
        try:
            await asyncio.to_thread(self._after_sweep)  # the next sweep sees `busy`
            return await self._install(app=app, version=version, sha256=sha256, app_id=app_id)
        finally:
            self.busy[app] -= 1
            if not self.busy[app]:
                del self.busy[app]

    def _after_sweep(self) -> None:
        with self.sweep_lock:
            pass

    def check_room(self, app: str, version: int, sha256: str) -> None:
        """Refuse a release not yet on this host when the disk is too full for it (before
        it fills); one already unpacked here may start again."""
        if not (self.min_free_mb or self.min_free_percent):
            return
        if _release_matches(self.release_dir(app, version), sha256):
            return
        free, total = disk.free_space(self.state_dir)
        why = disk.low_disk(
            free, total, min_free_mb=self.min_free_mb, min_free_percent=self.min_free_percent
        )
        if why is not None:
            log.error("refusing release %d of %s: low on disk (%s)", version, app, why)
            raise disk.LowDisk(
                f"this host is low on disk ({why}, in {self.state_dir}): new releases are"
                " refused before the disk fills. Free space or lower the threshold."
            )

    async def _install(
        self, *, app: str, version: int, sha256: str, app_id: str | None
    ) -> InstalledRelease:
        await asyncio.to_thread(self.check_room, app, version, sha256)
        try:
            artifact = await self._fetch(sha256)
        except OSError as exc:
            raise self._failure(exc, f"storing artifact {sha256[:12]}") from exc
        try:
            folders = await asyncio.to_thread(self.users.prepare, app)
            data = await asyncio.to_thread(
                datadir.prepare_data,
                folders,
                uid=self.users.uid_of(app),
                app_id=app_id,
                state_dir=self.state_dir,
            )
        except OSError as exc:
            raise self._failure(exc, f"preparing the folders of {app}") from exc
        release = self.release_dir(app, version)
        uid = self.users.uid_of(app)
        async with self._lock(f"release:{release}"):
            if not _release_matches(release, sha256):
                try:
                    await asyncio.to_thread(
                        self._unpack_release, artifact, release, sha256, uid=uid
                    )
                except (OSError, UnsafeArchive) as exc:
                    if not _no_space(exc) and isinstance(exc, InstallError):
                        raise
                    raise self._failure(exc, f"unpacking release {version} of {app}") from exc
                log.info("unpacked %s release %d into %s", app, version, release)
        spec = await asyncio.to_thread(self._spec, app, release, sha256)
        venv = folders.venvs / spec.key
        async with self._lock(f"venv:{app}:{spec.key}"):
            if _venv_ready(venv):
                log.info("%s release %d reuses venv %s", app, version, spec.key)
            else:
                log.info("%s release %d needs venv %s, building it", app, version, spec.key)
                try:
                    await asyncio.to_thread(self._build_venv, venv, spec, app=app)
                except (OSError, InstallError) as exc:
                    if isinstance(exc, InstallError) and not _no_space(exc):
                        raise
                    raise self._failure(exc, "building the environment") from exc
        return InstalledRelease(app=app, version=version, path=release, venv=venv, data=data)

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

    def _spec_path(self, app: str, release: Path) -> Path:
        return self.state_dir / "specs" / app / f"{release.name}.json"

    def _spec(self, app: str, release: Path, sha256: str) -> EnvironmentSpec:
        """The spec saved when the release was unpacked; computed now for older releases."""
        saved = statefile.load(self._spec_path(app, release), SavedSpec)
        if saved is not None and saved.sha256 == sha256:
            return saved.spec(release)
        return self._save_spec(app, release, release, sha256)

    def _save_spec(self, app: str, unpacked: Path, release: Path, sha256: str) -> EnvironmentSpec:
        spec = environment_spec(unpacked, python_version=python_identity(self._python))
        source = spec.source.relative_to(unpacked).as_posix() if spec.source else None
        path = self._spec_path(app, release)
        path.parent.parent.mkdir(mode=0o700, exist_ok=True)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        statefile.save(
            path,
            SavedSpec(sha256=sha256, key=spec.key, requirements=spec.requirements, source=source),
        )
        return EnvironmentSpec(
            key=spec.key,
            requirements=spec.requirements,
            source=release / source if source is not None else None,
        )

    def _unpack_release(
        self, artifact: Path, release: Path, sha256: str, *, uid: int | None
    ) -> None:
        """Unpack where only the agent reads, check, hand to the app's uid, rename into place
        (the staging folder is on the app folder's filesystem, which may be a mount)."""
        app = release.parent.parent.name
        staging = self.users.folders(app).staging
        staged = staging / f"{release.name}.{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        try:
            archive.unpack(artifact, staged, max_total_bytes=self._max_unpacked_bytes)
            _check_process_types(staged)
            # The marker is what makes a release folder usable (`_release_matches`): last.
            (staged / ".paas-artifact").write_text(sha256 + "\n")
            self._save_spec(app, staged, release, sha256)  # read while only we can write
            if uid is not None:
                _give_tree(staged, uid)
            os.chmod(staged, 0o700)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        if release.exists() or release.is_symlink():
            # Same version, different artifact (a re-created registry): replace it.
            old = staging / f".{release.name}.{os.getpid()}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(release, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(staged, release)

    def _build_venv(self, venv: Path, spec: EnvironmentSpec, *, app: str) -> None:
        folders = self.users.folders(app)
        uid = self.users.uid_of(app)
        tmp = Path(tempfile.mkdtemp(prefix=f".{venv.name}.", suffix=".build", dir=venv.parent))
        if uid is not None:
            os.lchown(tmp, uid, uid)  # lchown: never through a link the app put there
        try:
            # Built under a temp name and relocatable (uv), so nothing names the temp folder;
            # with pip, scripts are rewritten to the final path before the rename.
            self._create(tmp, spec, folders=folders, app=app)
            _fix_script_paths(tmp, venv, uid=uid)
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

    def _build_env(self, target: Path, folders: AppFolders, app: str) -> dict[str, str]:
        """What a build sees: the app's own HOME, TMPDIR and uv cache, and from the agent's
        environment only the package index, proxy and TLS settings."""
        env = {
            key: value
            for key, value in os.environ.items()
            if key.startswith(BUILD_ENV_PREFIXES) or key in BUILD_ENV_NAMES
        }
        tmp = str(folders.tmp)
        env.update(
            PATH=f"{target / 'bin'}:{os.environ.get('PATH') or '/usr/local/bin:/usr/bin:/bin'}",
            VIRTUAL_ENV=str(target),
            HOME=str(folders.home),
            USER=f"app-{app}",
            LOGNAME=f"app-{app}",
            TMPDIR=tmp,
            TMP=tmp,
            TEMP=tmp,
            UV_CACHE_DIR=str(folders.cache / "uv"),
            UV_PYTHON_DOWNLOADS="never",
            PIP_CACHE_DIR=str(folders.cache / "pip"),
        )
        return env

    def _create(
        self, target: Path, spec: EnvironmentSpec, *, folders: AppFolders, app: str
    ) -> None:
        uv = find_uv()
        env = self._build_env(target, folders, app)
        user = self.app_user(app)
        if user is not None and self._build_cgroup is not None:
            user = user.in_cgroups(self._build_cgroup(app))
        python = str(target / "bin" / "python")
        # Beside the venv, not in it: `uv venv` wants an empty folder.
        requirements = target.with_name(f"{target.name}.requirements.txt")
        source = spec.source if spec.source is not None else requirements
        if uv:
            steps = [
                [uv, "venv", "--quiet", "--relocatable", "--python", self._python, str(target)]
            ]
            install = [uv, "pip", "install", "--python", python, *self.package_index.uv_args()]
            install += ["-r", str(source)]
            env.update(self.package_index.uv_env())  # URLs in env, never in an argv
        else:
            steps = [[self._python, "-m", "venv", str(target)]]
            install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            install += ["-r", str(source)]
            env.update(self.package_index.pip_env())
        if spec.requirements is not None and spec.source is None:
            # Written by the agent in the app's folder: created fresh (O_EXCL, no link
            # followed) and handed to the app's uid, which reads it.
            fd = os.open(requirements, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(spec.requirements)
                if user is not None:
                    os.fchown(out.fileno(), user.uid, user.gid)
        if spec.requirements is not None:
            steps.append(install)
        output: list[str] = []
        try:
            for argv in steps:
                try:
                    cwd = source.parent if argv is install and spec.source is not None else None
                    result = procs.run(argv, timeout_s=self._timeout_s, env=env, cwd=cwd, user=user)
                    output.append(result.output)
                except procs.ProcessError as exc:
                    output.append(exc.output)
                    text = redact("\n".join(output).strip())  # no index credentials
                    # uv's "Using Python 3.11 environment at: <temp folder>" says nothing useful.
                    kept = [ln for ln in text.splitlines() if not ln.startswith("Using Python ")]
                    lines = "\n".join(kept[-TAIL_LINES:])
                    doing = (
                        "installing the requirements" if argv is install else "creating the venv"
                    )
                    what = redact(str(exc).replace(argv[0], Path(argv[0]).name))
                    raise InstallError(f"{doing} failed ({what}):\n{lines}") from exc
        finally:
            requirements.unlink(missing_ok=True)


def _fix_script_paths(built: Path, final: Path, *, uid: int | None = None) -> None:
    """Rewrite the temp path baked into activate scripts and console-script shebangs.

    The files belong to the app's uid, which may race us: each is opened without following
    a link and rewritten only if it is a regular file of that uid (never one of ours)."""
    old, new = str(built).encode(), str(final).encode()
    bin_dir = built / "bin"
    paths = list(bin_dir.iterdir()) if bin_dir.is_dir() and not bin_dir.is_symlink() else []
    for path in [*paths, built / "pyvenv.cfg"]:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "r+b") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or (uid is not None and info.st_uid != uid):
                continue
            data = handle.read(16 << 20)
            if old not in data or (b"\x00" in data[:1024] and path.name != "pyvenv.cfg"):
                continue
            handle.seek(0)
            handle.write(data.replace(old, new))
            handle.truncate()


def _check_process_types(release: Path) -> None:
    """At most MAX_PROCESS_TYPES Procfile types (the registry checks it too; a host does not
    trust that): each one is at least one process."""
    procfile = release / "Procfile"
    if not procfile.is_file() or procfile.is_symlink():
        return
    try:
        types = parse_procfile(read_text(procfile))
    except ManifestError as exc:
        raise InstallError(str(exc)) from exc
    if len(types) > MAX_PROCESS_TYPES:
        raise InstallError(
            f"the Procfile declares {len(types)} process types; an app may have at most"
            f" {MAX_PROCESS_TYPES}"
        )


def _give_tree(root: Path, uid: int) -> None:
    """lchown everything under `root` to the app's uid (links themselves, never targets)."""
    os.lchown(root, uid, uid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, uid)


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


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
