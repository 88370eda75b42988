"""One single-threaded worker, as `gunicorn app:app` with one sync worker serves: while /slow
sleeps ($SLOW_S, default 8 s), every other request (health checks included) waits in the
listen backlog. HTTP/1.0, so no connection stays open between requests."""

import os
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

APP = os.environ.get("PAAS_APP", "single-worker")
RELEASE = os.environ.get("PAAS_RELEASE", "?")
SLOW_S = float(os.environ.get("SLOW_S", "8"))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(SLOW_S)
            text = f"slow answer from {APP}"
        elif self.path == "/health":
            text = "ok"
        else:
            deps = sorted(k for k in os.environ if k.endswith("_URL"))
            text = f"single worker {APP} release {RELEASE} deps={','.join(deps)}"
        body = f"{text}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def main():
    port = int(os.environ.get("PORT", "5000"))
    server = HTTPServer(("127.0.0.1", port), Handler)
    print(f"{APP} release {RELEASE} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
