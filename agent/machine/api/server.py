"""The machine agent's small HTTP API: instance logs, one-off runs and /metrics.

Served by uvicorn inside the agent's own event loop, on `address:api_port` (port 0: any free
port; the agent reports the port it got in every status report, so the registry always knows
where to reach it).

Who may call it: the registry, signing each request with this host's agent API key
(common/agent_auth.py: HMAC of method, path, time and body hash, valid WINDOW_S, once). The
key is derived from the host token the agent holds; the registry keeps it sealed with a key
file outside its database, so neither registry.db (which holds sha256(host token), the old
bearer credential) nor a backup nor a network observer can call this API, and re-joining (a
new host token) retires the old key. `/metrics` needs no credential, like every Prometheus
exporter: bind the API to an address only the scraper and the registry reach.

Streams are NDJSON, one object per line; a blank line is sent every few seconds while
nothing else is, so a caller that went away is noticed (the write fails) and its run is
killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.api_server import metrics_endpoint
from agent.machine.api.data import DataAccess, DataRoutes
from agent.machine.run.logs import LogFollowers, LogStore, is_health_check
from agent.machine.run.oneoff import run_streaming
from agent.procs import AppUser
from common.agent_auth import ReplayGuard, api_key, check
from common.names import EnvKey, EnvValue, InvalidName, Sha256, check_app_name
from common.streaming import NDJSON, ClosingStream, ndjson

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
MAX_LINES = 10000
MAX_BODY_BYTES = 1024 * 1024  # a run's argv is at most 64 KiB; a release phase adds its env


@dataclass(frozen=True)
class RunTarget:
    """Where and how a one-off command of an app runs on this host."""

    cwd: Path
    env: dict[str, str]
    user: AppUser | None  # the app's own uid and cgroups; None: as the agent (not root)


class RunRequest(BaseModel):
    argv: list[str] = Field(min_length=1, max_length=256)
    timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if any("\x00" in arg for arg in value) or sum(len(a) for a in value) > 64 * 1024:
            raise ValueError("arguments may not contain NUL bytes or exceed 64 KiB in all")
        if not value[0]:
            raise ValueError("the command may not be empty")
        return value


class ReleasePhaseRequest(BaseModel):
    """The registry runs a release's `release:` Procfile command here before any instance of
    the release starts, so the command comes with the release's artifact and environment."""

    version: int = Field(ge=1)
    artifact_sha256: Sha256
    command: str = Field(min_length=1, max_length=64 * 1024)
    env: dict[EnvKey, EnvValue]
    timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("the command may not contain NUL bytes")
        return value


ReleaseTarget = Callable[[str, ReleasePhaseRequest], Awaitable[RunTarget]]


class UnknownApp(LookupError):
    """The app has no installed release on this host."""


class AgentApi:
    def __init__(
        self,
        *,
        host_name: str,
        token_file: Path,
        store: LogStore,
        followers: LogFollowers,
        run_target: Callable[[str], Awaitable[RunTarget]],
        run_timeout_s: float,
        release_target: ReleaseTarget | None = None,
        data: Callable[[str], DataAccess] | None = None,
    ) -> None:
        self.host_name = host_name
        self.token_file = token_file
        self.store = store
        self.followers = followers
        self.run_target = run_target
        self.run_timeout_s = run_timeout_s
        self.release_target = release_target
        self.replays = ReplayGuard()
        self.app = Starlette(
            routes=[
                Route("/metrics", metrics_endpoint, methods=["GET"]),
                Route("/v1/logs/{app}", self.logs, methods=["GET"]),
                Route("/v1/run/{app}", self.run, methods=["POST"]),
                Route("/v1/release-phase/{app}", self.release_phase, methods=["POST"]),
            ]
        )
        if data is not None:  # PAAS_DATA_DIR export/import/delete (apps that keep data)
            routes = DataRoutes(data, self._verified_body)
            self.app.add_route("/v1/data/{app}", routes.export, methods=["GET"])
            self.app.add_route("/v1/data/{app}", routes.import_, methods=["PUT"])
            self.app.add_route("/v1/data/{app}", routes.delete, methods=["DELETE"])

    # ---- auth -------------------------------------------------------------------------------

    async def _verified_body(
        self, request: Request, *, max_bytes: int = MAX_BODY_BYTES
    ) -> bytes | Response:
        """The request's body when the registry signed this request, else the refusal. The
        body is read (bounded) before anything else: the signature covers it."""
        try:
            token = self.token_file.read_text().strip()
        except OSError:
            token = ""
        if not token:
            return JSONResponse({"detail": "this host has not joined the registry yet"}, 503)
        header = request.headers.get("authorization", "")
        if not header:
            return JSONResponse({"detail": "missing registry signature"}, 401)
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > max_bytes:
            return JSONResponse({"detail": f"body larger than {max_bytes} bytes"}, 413)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                return JSONResponse({"detail": f"body larger than {max_bytes} bytes"}, 413)
        body = b"".join(chunks)
        query = request.scope.get("query_string", b"")
        target = request.scope.get("raw_path") or request.url.path.encode()
        problem = check(
            api_key(token),
            header,
            method=request.method,
            target=target + (b"?" + query if query else b""),
            body=body,
            now=time.time(),
            guard=self.replays,
        )
        if problem is not None:
            return JSONResponse({"detail": problem}, 401)
        return body

    def _app(self, request: Request) -> str:
        return check_app_name(request.path_params["app"])

    # ---- routes -------------------------------------------------------------------------------

    async def logs(self, request: Request) -> Response:
        verified = await self._verified_body(request)
        if isinstance(verified, Response):
            return verified
        try:
            app = self._app(request)
            since_s = _number(request.query_params.get("since_s"), "since_s")
            lines = int(_number(request.query_params.get("lines"), "lines") or 0) or None
        except (InvalidName, ValueError) as exc:
            return JSONResponse({"detail": str(exc)}, 422)
        follow = request.query_params.get("follow") in ("1", "true")
        health = request.query_params.get("health") in ("1", "true")  # health-check lines
        since = time.time() - since_s if since_s else None
        lines = min(lines, MAX_LINES) if lines else (None if since else 100)
        return ClosingStream(
            self._log_stream(app, since=since, lines=lines, follow=follow, health=health),
            media_type=NDJSON,
        )

    async def _log_stream(
        self, app: str, *, since: float | None, lines: int | None, follow: bool, health: bool
    ) -> AsyncIterator[bytes]:
        with self.followers.follow(app) as queue:
            past = await asyncio.to_thread(
                self.store.history, app, since=since, lines=lines, health=health
            )
            for entry in past:
                yield ndjson(entry.to_wire(self.host_name))
            if not follow:
                return
            yield ndjson({"live": True})  # the history is complete; new lines follow
            last = past[-1].time if past else 0.0
            while True:
                try:
                    entry = await asyncio.wait_for(queue.get(), timeout=HEARTBEAT_S)
                except TimeoutError:
                    yield b"\n"
                    continue
                if entry.time > last and (health or not is_health_check(entry.line)):
                    yield ndjson(entry.to_wire(self.host_name))

    async def run(self, request: Request) -> Response:
        verified = await self._verified_body(request)
        if isinstance(verified, Response):
            return verified
        try:
            app = self._app(request)
            body = RunRequest.model_validate_json(verified)
        except (InvalidName, ValidationError) as exc:
            return JSONResponse({"detail": str(exc)}, 422)
        try:
            target = await self.run_target(app)
        except UnknownApp as exc:
            return JSONResponse({"detail": str(exc)}, 404)
        timeout_s = min(body.timeout_s or self.run_timeout_s, self.run_timeout_s)
        log.info("one-off run for %s: %s (limit %gs)", app, body.argv[0], timeout_s)
        stream = run_streaming(
            body.argv, env=target.env, cwd=target.cwd, timeout_s=timeout_s, user=target.user
        )
        return ClosingStream(self._run_stream(stream), media_type=NDJSON)

    async def release_phase(self, request: Request) -> Response:
        """The one-off machinery for a release's `release:` command: `/bin/sh -c COMMAND` in
        the new release's folder, venv and config vars (installed here first if needed)."""
        verified = await self._verified_body(request)
        if isinstance(verified, Response):
            return verified
        if self.release_target is None:
            return JSONResponse({"detail": "this host runs no release phases"}, 404)
        try:
            app = self._app(request)
            body = ReleasePhaseRequest.model_validate_json(verified)
        except (InvalidName, ValidationError) as exc:
            return JSONResponse({"detail": str(exc)}, 422)
        try:
            target = await self.release_target(app, body)
        except UnknownApp as exc:
            return JSONResponse({"detail": str(exc)}, 404)
        timeout_s = min(body.timeout_s or self.run_timeout_s, self.run_timeout_s)
        log.info("release phase of %s v%d (limit %gs)", app, body.version, timeout_s)
        stream = run_streaming(
            ["/bin/sh", "-c", body.command],
            env=target.env,
            cwd=target.cwd,
            timeout_s=timeout_s,
            user=target.user,
        )
        return ClosingStream(self._run_stream(stream), media_type=NDJSON)

    async def _run_stream(self, stream: AsyncIterator[dict[str, object]]) -> AsyncIterator[bytes]:
        """The run's events, with a blank line whenever it is quiet for HEARTBEAT_S."""
        pending: asyncio.Task[dict[str, object]] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_S)
                if not done:
                    yield b"\n"
                    continue
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield ndjson({**event, "host": self.host_name} if "exit" in event else event)
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await stream.aclose()  # type: ignore[attr-defined]


def _number(text: str | None, what: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if value < 0 or value != value:
        raise ValueError(f"{what} must be 0 or more")
    return value
