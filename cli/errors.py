"""The CLI's one error hierarchy: each one becomes a single line on stderr and an exit code."""

from __future__ import annotations


class CliError(Exception):
    """An expected failure; `main` prints its message as one line and exits non-zero."""

    exit_code = 1


class ConfigError(CliError):
    """No registry URL or token, or an unreadable config file."""


class RegistryUnreachable(CliError):
    """The registry did not answer at the transport level (refused, timeout, DNS)."""


class ApiError(CliError):
    """The registry answered with an error status; `status` keeps the HTTP code."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class PackError(CliError):
    """The app folder cannot be packed (missing Procfile, escaping symlink, ...)."""


class DeployFailed(CliError):
    """The release failed or timed out; the message carries the registry's reason."""


class ClusterError(CliError):
    """The local cluster could not be started or stopped (port in use, process died, ...)."""
