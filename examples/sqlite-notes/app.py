"""Notes kept in SQLite in PAAS_DATA_DIR, so they survive redeploys and config changes.

GET / lists the notes (one per line), POST / with a text body adds one, GET /health is 200.
Only the standard library: sqlite3 and http.server.
"""

from __future__ import annotations

import os
import sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DB = Path(os.environ["PAAS_DATA_DIR"]) / "notes.sqlite3"
GREETING = os.environ.get("GREETING", "notes")
MAX_NOTE = 4096


def connect() -> sqlite3.Connection:
    db = sqlite3.connect(DB, timeout=5)
    db.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    return db


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, "ok\n")
            return
        with connect() as db:
            rows = db.execute("SELECT text FROM notes ORDER BY id").fetchall()
        release = os.environ.get("PAAS_RELEASE", "?")
        lines = [f"{GREETING} (release {release}): {len(rows)} note(s)"]
        self._send(200, "\n".join(lines + [text for (text,) in rows]) + "\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_NOTE:
            self._send(400, f"send a note of 1 to {MAX_NOTE} bytes\n")
            return
        text = self.rfile.read(length).decode(errors="replace")
        with connect() as db:
            db.execute("INSERT INTO notes (text) VALUES (?)", (text,))
        self._send(201, "saved\n")

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
