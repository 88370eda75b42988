"""Test app for pass-through checks: header echo, uploads, server-sent events, WebSocket echo.

Stdlib only. /sse sends one event, then waits until /release is called before the second:
a proxy that buffered the response would never show the first event on its own.
"""

import base64
import hashlib
import json
import os
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = os.environ.get("PAAS_APP", "passthrough")
RELEASED = threading.Event()
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, b"ok\n", "text/plain")
        if self.path == "/sse":
            return self._sse()
        if self.path == "/release":
            RELEASED.set()
            return self._send(200, b"released\n", "text/plain")
        if self.path == "/ws":
            return self._websocket()
        names = (
            "Host",
            "X-Forwarded-For",
            "X-Forwarded-Proto",
            "X-Forwarded-Host",
            "X-Request-ID",
            "Upgrade",
        )
        seen = {name: self.headers.get_all(name) for name in names}
        return self._send(200, json.dumps({"app": APP, "headers": seen}).encode())

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        digest, left = hashlib.sha256(), length
        while left:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        body = json.dumps({"size": length - left, "sha256": digest.hexdigest()}).encode()
        self._send(200, body)

    def _sse(self):
        RELEASED.clear()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"data: first\n\n")
        self.wfile.flush()
        RELEASED.wait(timeout=30)
        self.wfile.write(b"data: second\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            return self._send(400, b"not a websocket request\n", "text/plain")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                break
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:  # close
                self.wfile.write(b"\x88\x00")
                break
            header = bytes([0x80 | opcode])
            if len(data) < 126:
                header += bytes([len(data)])
            else:
                header += bytes([126]) + struct.pack("!H", len(data))
            self.wfile.write(header + data)
            self.wfile.flush()
        self.close_connection = True

    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "5000"))), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
