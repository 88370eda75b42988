"""Healthy at first, then exits with status 1 after $CRASH_AFTER_S seconds (default 5), as an
app that runs out of some resource soon after it started would."""

import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = os.environ.get("PAAS_APP", "crashes-later")
RELEASE = os.environ.get("PAAS_RELEASE", "?")
CRASH_AFTER_S = float(os.environ.get("CRASH_AFTER_S", "5"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        text = "ok" if self.path == "/health" else f"Crashes later, from {APP} (release {RELEASE})"
        body = f"{text}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def crash_later():
    time.sleep(CRASH_AFTER_S)
    print(f"worker pool exhausted after {CRASH_AFTER_S:g}s, exiting", file=sys.stderr, flush=True)
    os._exit(1)


def main():
    port = int(os.environ.get("PORT", "5000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=crash_later, daemon=True).start()
    print(f"{APP} release {RELEASE} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
