"""uvicorn's server with one change: at shutdown, long-poll watches answer first.

uvicorn stops by closing its listeners, asking every connection to finish, and waiting up to
`timeout_graceful_shutdown` before it cancels what is left (a CancelledError traceback in the
log). A watch would sit out that whole wait, so the notifier is closed before uvicorn's own
shutdown starts: every watch answers with the current revision at once, the agents re-watch
(and find the listener closed or the next registry), and the registry stops in well under a
second.
"""

from __future__ import annotations

import socket

import uvicorn

from controller.sync.watch import Notifier


class WatchClosingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, notifier: Notifier) -> None:
        super().__init__(config)
        self._notifier = notifier

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._notifier.close()
        await super().shutdown(sockets)
