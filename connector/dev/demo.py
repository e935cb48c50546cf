"""What does ``ablo-connector dev`` serve? A small SQLite database of tasks.

The demo is the SQL adapter serving a fresh SQLite file, so the first thing
a new user runs is the path most users will run in production, with
nothing but the standard library. This module only writes the sample table;
the adapter's own ``migrate`` adds its ledger and outbox.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Final

__all__ = ["DEMO_REQUESTS", "create_demo_database"]

_SCHEMA: Final = """
CREATE TABLE task (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    done       BOOLEAN NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
)
"""
_ROWS: Final = [
    ("t1", "Write the connector's README", False),
    ("t2", "Serve a database with no code", False),
    ("t3", "Run it next to the database", True),
]

#: What ``dev`` sends through the local engine once the connector is ready.
DEMO_REQUESTS: Final[list[dict[str, Any]]] = [
    {"type": "load", "model": "task", "id": "t1"},
    {"type": "list", "model": "task", "query": {"where": [["done", False]], "limit": 10}},
    {
        "type": "commit",
        "correlationId": "demo_commit_1",
        "operations": [{"type": "UPDATE", "model": "task", "id": "t1", "input": {"done": True}}],
    },
    {"type": "events", "limit": 5},
]


def create_demo_database(path: Path) -> str:
    """Write the sample ``task`` table into a new SQLite file; returns its URL."""
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    with sqlite3.connect(path) as connection:
        connection.execute(_SCHEMA)
        connection.executemany("INSERT INTO task (id, title, done) VALUES (?, ?, ?)", _ROWS)
    connection.close()
    return f"sqlite:///{path}"
