"""The release phase: create or upgrade the database in PAAS_DATA_DIR before any instance
of the new release starts (on a first deploy too: the folder exists before this runs)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

DB = Path(os.environ["PAAS_DATA_DIR"]) / "notes.sqlite3"

with sqlite3.connect(DB) as db:
    db.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
print(f"database ready at {DB}")
