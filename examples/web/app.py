"""An example front app for `depends_on`: GET / calls the users API through $USERS_URL.

USERS_URL is set by the platform from paas.toml `depends_on = ["users"]`; it stays the same
when users moves between hosts. GET /pid tells which process answered (tests use it to see
that web was not restarted). Stdlib only, listens on $PORT.
"""

import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = os.environ.get("PAAS_APP", "web")
RELEASE = os.environ.get("PAAS_RELEASE", "?")
USERS_URL = os.environ.get("USERS_URL", "")


def fetch_users():
    with urllib.request.urlopen(USERS_URL.rstrip("/") + "/users", timeout=10) as response:
        return json.load(response)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"ok": True})
        elif self.path == "/pid":
            self._send(200, {"app": APP, "release": RELEASE, "pid": os.getpid()})
        elif self.path == "/":
            if not USERS_URL:
                self._send(500, {"error": "USERS_URL is not set (depends_on missing?)"})
                return
            try:
                users = fetch_users()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self._send(502, {"error": f"users is unreachable: {exc}"})
                return
            self._send(200, {"app": APP, "release": RELEASE, "pid": os.getpid(), **users})
        else:
            self._send(404, {"error": "not found"})

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
