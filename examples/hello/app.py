"""The smallest paas app: stdlib only, listens on $PORT, answers / and /health."""

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = os.environ.get("PAAS_APP", "hello")
RELEASE = os.environ.get("PAAS_RELEASE", "?")
GREETING = "Hello from {app} (release {release})\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so benchmarks measure the proxies, not TCP
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms Nagle stall

    def do_GET(self):
        if self.path == "/health":
            body = b"ok\n"
        else:
            body = GREETING.format(app=APP, release=RELEASE).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # one line per request on stderr, no DNS lookups
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


def main():
    port = int(os.environ.get("PORT", "5000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        # shutdown() blocks until serve_forever returns, so call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{APP} release {RELEASE} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
    server.server_close()
    print("stopped cleanly", flush=True)


if __name__ == "__main__":
    main()
