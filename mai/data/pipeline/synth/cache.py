"""A persistent cache of teacher responses keyed by the exact request, in one SQLite file.

A response is committed the moment it arrives, so a killed run loses only the requests in flight, and a
re-run with the same requests never pays for them again. Only successful responses are stored: a request
that failed is tried again next time.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any


def request_key(body: dict[str, Any]) -> str:
    """sha256 of the request body in canonical JSON: same request, same key."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, request TEXT NOT NULL, "
                        "response TEXT NOT NULL, created REAL NOT NULL)")
        self.db.commit()

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        row = (key, json.dumps(request, ensure_ascii=False), json.dumps(response, ensure_ascii=False),
               time.time())
        self.db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)", row)
        self.db.commit()

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self.db.close()
