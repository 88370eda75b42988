"""The registry's server when it speaks TLS: handshakes bounded like request headers.

asyncio gives a TLS handshake 60 s by default, and the edge limits (controller/server/edge.py) only
see a connection once its handshake is done: a client that opens connections and never
finishes a handshake would hold each for a minute. The handshake gets the header timeout
instead (`header_timeout_s`), passed to the `create_server` call uvicorn makes.

The closing TLS handshake is bounded too: at shutdown uvicorn closes idle keep-alive
connections, and an idle client (a pooled connection of the CLI or an agent) never answers
the close_notify, so asyncio would keep each one open for its default 30 s and uvicorn would
sit out its whole graceful-shutdown wait.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket

import uvicorn

from controller.server.serving import WatchClosingServer
from controller.sync.watch import Notifier

log = logging.getLogger("paas.registry")

TLS_CLOSE_TIMEOUT_S = 0.5  # an idle client's close_notify answer, at shutdown


class TlsBoundedServer(WatchClosingServer):
    def __init__(
        self, config: uvicorn.Config, *, notifier: Notifier, handshake_timeout_s: float
    ) -> None:
        super().__init__(config, notifier=notifier)
        self._handshake_timeout_s = handshake_timeout_s

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.config.ssl is None:
            await super().startup(sockets)
            return
        loop = asyncio.get_running_loop()
        try:  # only for the one call uvicorn makes now; a C loop (uvloop) keeps its default
            loop.create_server = functools.partial(  # type: ignore[method-assign]
                loop.create_server,
                ssl_handshake_timeout=self._handshake_timeout_s,
                ssl_shutdown_timeout=TLS_CLOSE_TIMEOUT_S,
            )
        except AttributeError:
            log.warning("TLS handshakes keep the event loop's default timeout")
            await super().startup(sockets)
            return
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server
