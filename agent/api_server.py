"""The agents' HTTP listener: uvicorn inside the agent's own event loop, on a socket bound
before serving starts (port 0 gives a free port, known at once for the status reports).

Both agents use it: the machine agent serves its API (agent/machine/api/server.py) on it, the
frontend agent only `/metrics`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent import metrics

log = logging.getLogger(__name__)


class ServesApp(Protocol):
    """An API object that holds its Starlette app (agent/machine/api/server.py AgentApi)."""

    @property
    def app(self) -> Starlette: ...


async def metrics_endpoint(_request: Request) -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


def metrics_only_app() -> Starlette:
    """A frontend agent runs no apps: its API is /metrics alone."""
    return Starlette(routes=[Route("/metrics", metrics_endpoint, methods=["GET"])])


class _OwnSignals(uvicorn.Server):
    """The agent owns SIGTERM/SIGINT (it stops its apps first); uvicorn must not take them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """uvicorn on a socket we bind ourselves: the port is known before serving starts."""

    def __init__(self, api: ServesApp | Starlette, address: str, port: int) -> None:
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM
        )
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            api if isinstance(api, Starlette) else api.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self.server = _OwnSignals(config)

    async def serve(self) -> None:
        log.info("agent API listening on port %d", self.port)
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            # A cancelled serve() skips uvicorn's shutdown, which leaves the listening socket
            # registered with the event loop: closing only the fd would let the next socket
            # that reuses its number fail with FileNotFoundError (epoll MOD on a stale fd).
            # asyncio's Server.close() unregisters the reader before closing the socket.
            for server in getattr(self.server, "servers", []):
                server.close()
            self.sock.close()

    async def stop(self) -> None:
        self.server.should_exit = True
