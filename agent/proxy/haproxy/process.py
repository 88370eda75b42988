"""HAProxy's master-worker process: validate, start, reload, stop (through agent/procs).

HAProxy runs as our child in master-worker mode (`-W`, not daemonized), its output appended
to a log file in state_dir. Reload = SIGUSR2 to the master, confirmed on the master CLI by a
new worker pid. A master left over from a previous agent run (same config path) is adopted,
so restarting the agent does not drop a single connection.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent import procs
from agent.errors import ProxyError, ReloadFailed, ValidationFailed

log = logging.getLogger(__name__)

VALIDATE_TIMEOUT_S = 10.0
START_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ProcInfo:
    master_reloads: int
    master_failed: int
    workers: tuple[int, ...]


class HaproxyProcess:
    """Controls one HAProxy master; all blocking calls are bounded (run them in a thread)."""

    def __init__(
        self,
        *,
        binary: str,
        config: Path,
        pid_file: Path,
        master_socket: Path,
        log_file: Path,
    ) -> None:
        self.binary = binary
        self.config = config
        self.pid_file = pid_file
        self.master_socket = master_socket
        self.log_file = log_file
        self._child: procs.Child | procs.Adopted | None = None
        # Set by close(): an apply still running in a thread when the agent stops must not
        # start HAProxy again behind its back (it would outlive the agent).
        self._closed = threading.Event()
        self._starting = threading.Lock()  # close() waits for a start in progress

    # ---- validation ---------------------------------------------------------------------

    def validate(self, staged_config: Path) -> None:
        """`haproxy -c -f <staged>`; raises ValidationFailed with HAProxy's own message."""
        argv = [self.binary, "-c", "-f", str(staged_config)]
        try:
            done = procs.run(argv, timeout_s=VALIDATE_TIMEOUT_S, check=False)
        except procs.ProcessError as exc:
            raise ValidationFailed(f"could not run {' '.join(argv)}: {exc}") from exc
        if done.returncode != 0:
            output = done.output.splitlines()
            # Keep the alerts and warnings; the version notices only add noise to a report.
            lines = [line for line in output if line.strip() and "[NOTICE]" not in line]
            raise ValidationFailed("\n".join(lines) or f"haproxy -c exited with {done.returncode}")

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def adopt_or_clean(self) -> bool:
        """Adopt a master left running by a previous agent (same config); True when adopted."""
        pid = self._read_pid_file()
        if pid is None:
            return False
        master = procs.find(pid, leader=False)
        if master is None:
            return False
        cmdline = master.cmdline()
        if str(self.config) not in cmdline or "-W" not in cmdline:
            return False
        if self._proc_info() is None:
            log.warning("HAProxy master %d does not answer on its socket; stopping it", pid)
            self._child = master
            self.stop(grace_s=0.5)
            return False
        self._child = master
        log.info("adopted the running HAProxy master %d", pid)
        return True

    def start(self) -> None:
        """Start the master on the live config and wait until a worker serves."""
        with self._starting:
            if self._closed.is_set():
                raise ProxyError("the agent is stopping; HAProxy is not started again")
            self._start()

    def _start(self) -> None:
        if self.running():
            return
        self._child = None
        self.master_socket.unlink(missing_ok=True)
        argv = [
            self.binary,
            "-W",
            "-f",
            str(self.config),
            "-p",
            str(self.pid_file),
            "-S",
            f"{self.master_socket},mode,600",
        ]
        try:
            # Its own session: a Ctrl-C on the agent's terminal is ours to relay.
            child = procs.spawn(argv, env=None, cwd=None, log_path=self.log_file)
        except procs.ProcessError as exc:
            raise ProxyError(str(exc)) from exc
        self._child = child
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if (status := child.poll()) is not None:
                raise ProxyError(f"HAProxy exited with {status} at start: {self.log_tail()}")
            info = self._proc_info()
            if info is not None and info.workers:
                log.info("started HAProxy master %d (worker %s)", child.pid, info.workers)
                return
            time.sleep(0.05)
        self.stop(grace_s=0.5)
        raise ProxyError(f"HAProxy did not start within {START_TIMEOUT_S:.0f}s: {self.log_tail()}")

    def reload(self) -> None:
        """Seamless reload (start when not running); raises ReloadFailed unless confirmed."""
        if not self.running():
            if self.pid is not None:
                log.warning("HAProxy master %d is gone; starting it again", self.pid)
            try:
                self.start()
            except ProxyError as exc:
                raise ReloadFailed(str(exc)) from exc
            return
        before = self._proc_info()
        master = self._child
        assert master is not None
        try:
            signalled = master.signal_leader(signal.SIGUSR2)
        except procs.ProcessError as exc:
            raise ReloadFailed(f"could not signal HAProxy master {master.pid}: {exc}") from exc
        if not signalled:
            raise ReloadFailed(f"HAProxy master {master.pid} exited before the reload")
        old_workers = set(before.workers) if before else set()
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if not self.running():
                raise ReloadFailed(f"HAProxy master exited during reload: {self.log_tail()}")
            info = self._proc_info()
            if info is None:
                continue  # the master re-executes itself; its socket is back in a moment
            if before is not None and info.master_failed > before.master_failed:
                raise ReloadFailed(f"HAProxy refused the new config: {self.log_tail()}")
            if info.workers and not set(info.workers) & old_workers:
                log.info("HAProxy reloaded (worker %s)", ",".join(map(str, info.workers)))
                return
        raise ReloadFailed(
            f"HAProxy did not confirm the reload within {RELOAD_TIMEOUT_S:.0f}s: {self.log_tail()}"
        )

    def close(self, *, grace_s: float = 10.0) -> None:
        """Stop for good: the agent is exiting, nothing may start HAProxy afterwards."""
        with self._starting:
            self._closed.set()
        self.stop(grace_s=grace_s)

    def stop(self, *, grace_s: float = 10.0) -> None:
        """Soft stop (SIGUSR1: finish requests), SIGTERM after `grace_s`, then SIGKILL."""
        master = self._child
        if master is None or master.poll() is not None:
            self._reap()
            return
        for signum, wait_s in (
            (signal.SIGUSR1, grace_s),
            (signal.SIGTERM, 3.0),
        ):
            if not master.signal_leader(signum) or master.wait(wait_s) is not None:
                break
        else:
            master.signal(signal.SIGKILL)  # the whole group
            master.wait(3.0)
        self._reap()
        log.info("stopped HAProxy master %d", master.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no HAProxy log)"
        return "\n".join(text.strip().splitlines()[-lines:])

    # ---- helpers ------------------------------------------------------------------------

    def _reap(self) -> None:
        self._child = None
        self.pid_file.unlink(missing_ok=True)

    def _read_pid_file(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _master_cli(self, command: str) -> str | None:
        """One command on the master socket; None when the master does not answer."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(CLI_TIMEOUT_S)
                sock.connect(str(self.master_socket))
                sock.sendall(command.encode() + b"\n")
                sock.shutdown(socket.SHUT_WR)  # the master answers, then closes
                chunks: list[bytes] = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return None
        return b"".join(chunks).decode(errors="replace")

    def _proc_info(self) -> ProcInfo | None:
        text = self._master_cli("show proc")
        if not text:
            return None
        return parse_show_proc(text)


def parse_show_proc(text: str) -> ProcInfo | None:
    """Parse the master CLI's `show proc` (HAProxy 2.6) into the numbers a reload needs."""
    reloads = failed = -1
    workers: list[int] = []
    section = "master"
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if "old workers" in stripped:
                section = "old"
            elif "workers" in stripped:
                section = "workers"
            elif "programs" in stripped:
                section = "programs"
            continue
        fields = stripped.split()
        if section == "master" and len(fields) >= 3 and fields[1] == "master":
            with contextlib.suppress(ValueError):
                reloads = int(fields[2])
            if "[failed:" in stripped:
                with contextlib.suppress(ValueError):
                    failed = int(stripped.split("[failed:")[1].split("]")[0])
            else:
                failed = 0
        elif section == "workers" and len(fields) >= 2 and fields[1] == "worker":
            with contextlib.suppress(ValueError):
                workers.append(int(fields[0]))
    if reloads < 0:
        return None
    return ProcInfo(master_reloads=reloads, master_failed=max(failed, 0), workers=tuple(workers))
