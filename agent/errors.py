"""One error hierarchy for the agent: every failure the agent can name derives from AgentError.

Third-party errors (httpx, OSError, subprocess) are translated at the boundary with
`raise SomeAgentError(...) from exc`, so callers catch one family and log one clear line.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class RegistryCallFailed(AgentError):
    """A call to the registry failed: it could not be reached (`status` None), refused the
    request (`status` is its HTTP answer), or answered something that does not parse.

    Not the controller's `RegistryError`, which is an HTTP error the registry itself raises:
    this one is the agent's view of a call that did not give it what it asked for."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Network failures and 5xx/429 may pass; 4xx other than 429 need a human."""
        return self.status is None or self.status >= 500 or self.status == 429


class ArtifactMismatch(RegistryCallFailed):
    """A downloaded artifact's sha256 is not the one asked for."""


class ValidationFailed(AgentError):
    """The proxy's own validator refused a staged config; the message has the offending lines."""


class ReloadFailed(AgentError):
    """The proxy did not take a validated config (reload signal failed or the process is gone)."""


class ProxyError(AgentError):
    """The proxy process could not be started or stopped."""


class InstallError(AgentError):
    """An app release could not be installed; the message carries the installer's last lines."""


class UnsafeArchive(InstallError):
    """An artifact tries to write outside its folder or holds something that is not a plain file."""


class RenderError(AgentError):
    """A view model could not be built or rendered (invalid value, template error)."""
