"""An example API for `depends_on`: GET /users answers JSON; stdlib only, listens on $PORT."""

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = os.environ.get("PAAS_APP", "users")
RELEASE = os.environ.get("PAAS_RELEASE", "?")
HOST = os.environ.get("PAAS_HOST", "?")
USERS = [{"id": 1, "name": "Ada Lovelace"}, {"id": 2, "name": "Alan Turing"}]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"ok": True})
        elif self.path == "/users":
            served_by = {"app": APP, "release": RELEASE, "host": HOST, "pid": os.getpid()}
            self._send(200, {"users": USERS, "served_by": served_by})
        else:
            self._send(404, {"error": "not found", "try": "/users"})

    def _send(self, status, value):
        body = (json.dumps(value) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def main():
    port = int(os.environ.get("PORT", "5000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{APP} release {RELEASE} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
