"""A fake EC2 instance metadata service v2 for tests: token first, then reads with it.

It answers exactly like IMDSv2 for the few paths paas-firstboot reads (401 without a valid
token, 404 for what is not set), so the real client code runs against real HTTP.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "AQAEAFakeImdsV2Token=="


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: str = "") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token":
            self._send(404)
        elif not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._send(400, "missing ttl")
        else:
            self.server.requests.append(("PUT", self.path))
            self._send(200, TOKEN)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self._send(401)
            return
        value = self.server.paths.get(self.path.removeprefix("/latest/"))
        self._send(404) if value is None else self._send(200, value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    paths: dict[str, str]
    requests: list[tuple[str, str]]


@contextlib.contextmanager
def fake_imds(
    address: str, *, user_data: str | None, instance_id: str, local_ipv4: str
) -> Iterator[_Server]:
    """Serve on `address`, a free port; `server.server_address` tells where."""
    server = _Server((address, 0), _Handler)
    server.paths = {"meta-data/instance-id": instance_id, "meta-data/local-ipv4": local_ipv4}
    if user_data is not None:
        server.paths["user-data"] = user_data
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def endpoint(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"
