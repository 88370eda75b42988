"""NDJSON streaming shared by the registry and the machine agent's API."""

from __future__ import annotations

import json

from starlette.responses import StreamingResponse
from starlette.types import Send

NDJSON = "application/x-ndjson"


class ClosingStream(StreamingResponse):
    """A streaming response that always closes its iterator, so the generator's cleanup
    (kill a run, stop following, close the upstream connection) happens as soon as the
    caller is gone, not whenever the garbage collector gets to it."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


def ndjson(item: object) -> bytes:
    return (json.dumps(item, separators=(",", ":")) + "\n").encode()
