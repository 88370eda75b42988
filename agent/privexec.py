"""Become an app's process: join its cgroups, drop to its uid, then exec. Run as root.

    python -I -S privexec.py --uid U --gid G --env-fd N [--cgroup PROCS_FILE]... -- ARGV...

The machine agent starts this (its own interpreter, isolated: no PYTHON* variables, no site)
with an empty environment, because the app's environment is untrusted: an LD_PRELOAD or a
PATH of the app's must never reach a process that is still root. The app's environment
comes instead as JSON on an inherited file descriptor (a memfd), so no secret shows in
/proc/<pid>/cmdline either.

Order matters: the process writes its own pid into each cgroup first (so it is bounded
before anything of the app's runs, and nothing can fork out before), then drops every
supplementary group, the gid and the uid (real, effective, saved: no way back), sets
no_new_privs (no setuid binary or file capability can give privileges back), and execs
ARGV[0] looked up on the app's PATH with the app's environment.

A standalone script on purpose: it imports nothing of the agent, so it works with `-S`;
whatever it needs is imported before the drop, as the app's uid may not read our files.
"""

import ctypes
import json
import os
import sys
import warnings  # noqa: F401  os.execvpe imports it lazily: after the drop it may be unreadable

PR_SET_NO_NEW_PRIVS = 38
EXIT_SETUP = 126  # what a shell returns for "found but could not run"
EXIT_NOT_FOUND = 127


def _fail(message: str, code: int = EXIT_SETUP) -> None:
    os.write(2, f"paas: could not start the process: {message}\n".encode())
    os._exit(code)


def _parse(args: list[str]) -> tuple[int, int, int, list[str], list[str]]:
    uid = gid = env_fd = -1
    cgroups: list[str] = []
    while args and args[0] != "--":
        if len(args) < 2:
            _fail(f"option {args[0]} needs a value")
        option, value = args[0], args[1]
        args = args[2:]
        if option == "--uid":
            uid = int(value)
        elif option == "--gid":
            gid = int(value)
        elif option == "--env-fd":
            env_fd = int(value)
        elif option == "--cgroup":
            cgroups.append(value)
        else:
            _fail(f"unknown option {option}")
    argv = args[1:]
    if uid <= 0 or gid <= 0 or env_fd < 0 or not argv:
        _fail("usage: --uid U --gid G --env-fd N [--cgroup FILE]... -- ARGV...")
    return uid, gid, env_fd, cgroups, argv


def main(args: list[str]) -> None:
    uid, gid, env_fd, cgroups, argv = _parse(args)
    with os.fdopen(env_fd, "rb") as handle:
        env = json.loads(handle.read())
    if not isinstance(env, dict):
        _fail("the environment must be a JSON object")
    libc = ctypes.CDLL(None, use_errno=True)  # loaded while our files are still readable
    pid = str(os.getpid())
    for procs_file in cgroups:
        try:
            with open(procs_file, "w") as out:
                out.write(pid)
        except OSError as exc:
            _fail(f"joining cgroup {procs_file}: {exc}")
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        _fail(f"switching to uid {uid}: {exc}")
    if os.getuid() != uid or os.geteuid() != uid or os.getgroups() not in ([], [gid]):
        _fail("the uid switch did not stick")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail(f"no_new_privs: errno {ctypes.get_errno()}")
    os.umask(0o077)
    try:
        os.execvpe(argv[0], argv, {str(k): str(v) for k, v in env.items()})
    except OSError as exc:
        _fail(f"{argv[0]}: {exc.strerror}", EXIT_NOT_FOUND)


if __name__ == "__main__":
    main(sys.argv[1:])
