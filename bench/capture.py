"""Benchmark: what capture adds to an application's own writes, on PostgreSQL.

Starts a private PostgreSQL (``initdb``/``pg_ctl`` on PATH), creates two
identical tables, ``plain`` and ``captured`` (``migrate --capture`` installs
the triggers on the second only), and runs the same statements against each,
alternating in paired rounds in one run: single-row INSERTs and UPDATEs, each
its own transaction (autocommit), and one bulk UPDATE of every row.

    python bench/capture.py                  # 2,000 statements per kind, 3 rounds
    python bench/capture.py --rows 5000 --rounds 5

Prints the median time per statement (and per bulk UPDATE) for each table
and the ratio. Nothing here asserts on time: the figures are read off the
output (see the README).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connector.adapters.sql import ModelMap, create_database_engine, migrate
from connector.adapters.sql.capture import migrate_capture
from tests.postgres import PrivatePostgres

_DDL = """CREATE TABLE {name} (
  id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT false,
  priority INTEGER, due_at TIMESTAMPTZ, estimate DOUBLE PRECISION)"""


def _timed(connection: Any, statements: list[str]) -> float:
    started = time.perf_counter()
    for statement in statements:
        connection.execute(statement)
    return (time.perf_counter() - started) / len(statements)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import psycopg

    server = PrivatePostgres()
    server.start()
    try:
        url = server.dsn
        with psycopg.connect(url, autocommit=True) as connection:
            for name in ("plain", "captured"):
                connection.execute(_DDL.format(name=name))
        engine = create_database_engine(url)
        migrate(engine)
        migrate_capture(engine, ModelMap.from_dict({"models": {"captured": {}}}))
        engine.dispose()
        results: dict[tuple[str, str], list[float]] = {}
        with psycopg.connect(url, autocommit=True) as connection:
            for round_number in range(args.rounds):
                for name in ("plain", "captured"):
                    prefix = f"r{round_number}-"
                    inserts = [
                        f"INSERT INTO {name} (id, title, priority) VALUES ('{prefix}{i}', 't', {i})"
                        for i in range(args.rows)
                    ]
                    updates = [
                        f"UPDATE {name} SET priority = priority + 1 WHERE id = '{prefix}{i}'"
                        for i in range(args.rows)
                    ]
                    results.setdefault((name, "insert"), []).append(_timed(connection, inserts))
                    results.setdefault((name, "update"), []).append(_timed(connection, updates))
                    bulk = [f"UPDATE {name} SET done = NOT done WHERE id LIKE '{prefix}%'"]
                    results.setdefault((name, "bulk"), []).append(_timed(connection, bulk))
            rows = connection.execute("SELECT count(*) FROM ablo_outbox").fetchone()
    finally:
        server.close()
    print(f"{'statement':<32} {'plain':>12} {'captured':>12} {'ratio':>7}")
    for kind, label in (
        ("insert", "INSERT, 1 row (µs)"),
        ("update", "UPDATE, 1 row (µs)"),
        ("bulk", f"UPDATE, {args.rows} rows (ms)"),
    ):
        scale = 1e3 if kind == "bulk" else 1e6
        plain = statistics.median(results[("plain", kind)]) * scale
        captured = statistics.median(results[("captured", kind)]) * scale
        print(f"{label:<32} {plain:>12.1f} {captured:>12.1f} {captured / plain:>6.2f}x")
    print(f"outbox events written: {rows[0] if rows else 0}")


if __name__ == "__main__":
    main()
