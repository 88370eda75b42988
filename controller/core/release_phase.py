"""The release phase: a release's `release:` Procfile command, run once per deploy on one
machine host, in the new release's environment, before any instance of it is placed.

It reuses the one-off run machinery: the registry picks a host as placement would (its
constraints hold), and the host's agent installs the release and runs the command through
agent/machine/run/oneoff.py (`POST /v1/release-phase/{app}` on its API, as `paas run` uses
`/v1/run/{app}`), streaming NDJSON back. Exit 0 places the release's instances; anything
else fails the release with the output's tail, and the previous release is never touched.
Either way the output's tail is kept with the release (`release_output`), which `paas
deploy` prints and `paas releases APP VERSION` shows.

The agent installs the release before it runs the command; when that install fails the
agent refuses the run (404 naming the install error), and the release fails as an install
failure with the installer's output as plain text: the release phase never ran.

This module is the logic, on a session and plain values; controller/api/release_phase.py runs
it as the creating request's background task, with the database and the thread pool.

The run belongs to the registry process that created the release: if that process dies
meanwhile, the release fails at its deadline ("stuck at release phase").
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.core.deploys import (
    NO_HOST_ERROR,
    RELEASE_PROCESS,
    awaits_release_phase,
    fail_release,
    place_hosts,
    place_release,
)
from controller.core.release_env import release_env
from controller.core.services import service_ports
from controller.errors import RegistryError
from controller.settings import RegistrySettings
from controller.store.models import App, Release
from controller.sync.agent_link import AgentLink, agent_client, link_for

log = logging.getLogger("paas.registry")

TAIL_CHARS = 4000  # the output kept for the failure message


_NOT_INSTALLED = " could not be installed: "  # agent/machine/agent.py release_target's refusal


@dataclass(frozen=True)
class PhaseRun:
    link: AgentLink
    payload: dict[str, object]


@dataclass(frozen=True)
class PhaseResult:
    """What the agent did: ran the command (`code`, `output`), or refused to (`refused`: its
    answer's text; `install_failed`: because the release could not be installed there)."""

    code: int
    output: str
    refused: str | None = None
    install_failed: bool = False


def refusal(status: int, body: bytes) -> tuple[str, bool]:
    """The agent's non-200 answer as plain text (its JSON `detail`, unescaped), and whether it
    says the release could not be installed."""
    text = body.decode(errors="replace")
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError):
        detail = None
    message = detail if isinstance(detail, str) else text[:TAIL_CHARS]
    if status == 404 and _NOT_INSTALLED in message:
        return message.split(_NOT_INSTALLED, 1)[1][-TAIL_CHARS:], True
    return f"the agent answered {status}: {message[-TAIL_CHARS:]}", False


def _release(session: Session, app: str, version: int) -> Release | None:
    return session.execute(
        select(Release).join(App).where(App.name == app, Release.version == version)
    ).scalar_one_or_none()


def prepare(
    session: Session, app: str, version: int, *, settings: RegistrySettings, now: datetime
) -> PhaseRun | None:
    """Where and what to run; None when the release no longer waits for it."""
    release = _release(session, app, version)
    if release is None or not awaits_release_phase(release):
        return None
    hosts = place_hosts(session, release.app, 1, process=RELEASE_PROCESS)
    if not hosts:
        raise RegistryError(NO_HOST_ERROR)
    host = hosts[0]
    link = link_for(session, host, state_dir=settings.state_dir)
    left = (release.deadline_at - now).total_seconds() if release.deadline_at else None
    payload: dict[str, object] = {
        "version": release.version,
        "artifact_sha256": release.artifact_sha256,
        "command": release.processes[RELEASE_PROCESS],
        "env": release_env(release, host, service_ports(session), settings),
        "timeout_s": max(1.0, left) if left is not None else None,
    }
    return PhaseRun(link=link, payload=payload)


async def execute(run: PhaseRun, app: str) -> PhaseResult:
    """The command's exit code and output tail on the agent, or why it did not run."""
    tail: deque[str] = deque()
    size = 0
    code: int | None = None
    error: str | None = None
    async with agent_client() as client:
        url = f"{run.link.url}/v1/release-phase/{app}"
        async with client.stream("POST", url, json=run.payload, auth=run.link.auth) as response:
            if response.status_code != 200:
                message, not_installed = refusal(response.status_code, await response.aread())
                return PhaseResult(1, "", refused=message, install_failed=not_installed)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue  # heartbeat
                event = json.loads(line)
                if "data" in event:
                    tail.append(str(event["data"]))
                    size += len(tail[-1])
                    while size > TAIL_CHARS and len(tail) > 1:
                        size -= len(tail.popleft())
                if "error" in event:
                    error = str(event["error"])
                if "exit" in event:
                    code = int(event["exit"])
    text = "".join(tail)[-TAIL_CHARS:]
    if error:
        text = f"{text}\n{error}" if text else error
    return PhaseResult(code if code is not None else 1, text)


def finish(
    session: Session, app: str, version: int, result: PhaseResult, host: str, *, now: datetime
) -> None:
    """Place the release, or fail it with the phase's reason, if it still waits for it."""
    release = _release(session, app, version)
    if release is None or not awaits_release_phase(release):
        return  # superseded or past its deadline meanwhile
    reason = phase_outcome(release, result, host)
    if reason is None:
        place_release(session, release, now=now)
    else:
        fail_release(session, release, reason)


def phase_outcome(release: Release, result: PhaseResult, host: str) -> str | None:
    """Record the phase's output on `release`; the reason to fail it, or None to place it."""
    command = release.processes[RELEASE_PROCESS]
    if result.install_failed:
        return (
            f"install failed on host {host}; the release phase (`{command}`) did not run:\n"
            + (result.refused or "").strip()
        )
    if result.refused is not None:
        return f"release phase (`{command}`) not run on host {host}: {result.refused.strip()}"
    tail = result.output.rstrip()
    release.release_output = tail or None
    if result.code == 0:
        log.info(
            "release %s v%d: release phase passed on %s", release.app.name, release.version, host
        )
        return None
    return f"release phase (`{command}`) on host {host} exited with status {result.code}" + (
        f":\n{tail}" if tail else ""
    )


def fail(session: Session, app: str, version: int, reason: str) -> None:
    """Fail the release because its phase could not be run (no host, agent unreachable)."""
    release = _release(session, app, version)
    if release is not None and awaits_release_phase(release):
        fail_release(session, release, f"release phase not run: {reason}")
