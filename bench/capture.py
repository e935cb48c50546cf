"""Benchmark: what capture adds to an application's own writes, on PostgreSQL
or MariaDB.

Starts a private PostgreSQL (``initdb``/``pg_ctl`` on PATH) or, with
``--mariadb``, a private MariaDB (``mariadbd`` and ``mariadb-install-db``),
creates two identical tables, ``plain`` and ``captured`` (``migrate
--capture`` installs the triggers on the second only), and runs the same
statements against each, alternating in paired rounds in one run:
single-row INSERTs and UPDATEs, each its own transaction (autocommit), and
one bulk UPDATE of every row.

    python bench/capture.py                  # 2,000 statements per kind, 3 rounds
    python bench/capture.py --rows 5000 --rounds 5
    python bench/capture.py --mariadb

Prints the median time per statement (and per bulk UPDATE) for each table
and the ratio. On MariaDB the triggers stage their rows and the connector
moves them into the outbox: it also prints how long moving every staged row
took, in the connector's batches. Nothing here asserts on time: the figures
are read off the output (see the README).
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
from connector.adapters.sql.dialects import dialect_named

_DDL = """CREATE TABLE {name} (
  id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT false,
  priority INTEGER, due_at TIMESTAMPTZ, estimate DOUBLE PRECISION)"""
_MYSQL_DDL = """CREATE TABLE {name} (
  id VARCHAR(64) PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT false,
  priority INTEGER, due_at DATETIME(6), estimate DOUBLE)"""
# What the connector moves per transaction (see SQLSource: one batch per events page).
_MOVE_BATCH = 1000


def _timed(run: Any, statements: list[str]) -> float:
    started = time.perf_counter()
    for statement in statements:
        run(statement)
    return (time.perf_counter() - started) / len(statements)


def _rounds(run: Any, rows: int, rounds: int) -> dict[tuple[str, str], list[float]]:
    results: dict[tuple[str, str], list[float]] = {}
    for round_number in range(rounds):
        for name in ("plain", "captured"):
            prefix = f"r{round_number}-"
            inserts = [
                f"INSERT INTO {name} (id, title, priority) VALUES ('{prefix}{i}', 't', {i})"
                for i in range(rows)
            ]
            updates = [
                f"UPDATE {name} SET priority = priority + 1 WHERE id = '{prefix}{i}'"
                for i in range(rows)
            ]
            results.setdefault((name, "insert"), []).append(_timed(run, inserts))
            results.setdefault((name, "update"), []).append(_timed(run, updates))
            bulk = [f"UPDATE {name} SET done = NOT done WHERE id LIKE '{prefix}%'"]
            results.setdefault((name, "bulk"), []).append(_timed(run, bulk))
    return results


def _capture(url: str) -> None:
    engine = create_database_engine(url)
    try:
        migrate(engine)
        migrate_capture(engine, ModelMap.from_dict({"models": {"captured": {}}}))
    finally:
        engine.dispose()


def _postgres(rows: int, rounds: int) -> tuple[dict[tuple[str, str], list[float]], list[str]]:
    import psycopg

    from tests.postgres import PrivatePostgres

    server = PrivatePostgres()
    server.start()
    try:
        url = server.dsn
        with psycopg.connect(url, autocommit=True) as connection:
            for name in ("plain", "captured"):
                connection.execute(_DDL.format(name=name))
        _capture(url)
        with psycopg.connect(url, autocommit=True) as connection:
            results = _rounds(connection.execute, rows, rounds)
            count = connection.execute("SELECT count(*) FROM ablo_outbox").fetchone()
    finally:
        server.close()
    return results, [f"outbox events written: {count[0] if count else 0}"]


def _mariadb(rows: int, rounds: int) -> tuple[dict[tuple[str, str], list[float]], list[str]]:
    import pymysql

    from tests.mariadb import PrivateMariaDB

    server = PrivateMariaDB()
    server.start()
    try:
        url = server.dsn
        connection = pymysql.connect(
            host="127.0.0.1", port=server.port, user="root", database="test", autocommit=True
        )
        try:
            with connection.cursor() as cursor:
                for name in ("plain", "captured"):
                    cursor.execute(_MYSQL_DDL.format(name=name))
            _capture(url)
            with connection.cursor() as cursor:
                results = _rounds(cursor.execute, rows, rounds)
                cursor.execute("SELECT count(*) FROM ablo_capture_pending")
                (staged,) = cursor.fetchone()
        finally:
            connection.close()
        # Moving every staged row into the outbox, as the connector does at
        # its events pages and probes: one transaction per batch, under its lock.
        engine = create_database_engine(url)
        dialect = dialect_named("mysql")

        def move(connection: Any) -> int:
            return dialect.move_captured(connection, _MOVE_BATCH)

        try:
            started = time.perf_counter()
            moved, batch = 0, _MOVE_BATCH
            while batch == _MOVE_BATCH:
                batch = dialect.run_write(engine, move, ())
                moved += batch
            took = time.perf_counter() - started
        finally:
            engine.dispose()
    finally:
        server.close()
    return results, [
        f"rows staged by the triggers: {staged}",
        f"moved into the outbox: {moved} in {took * 1e3:.0f} ms "
        f"({took / max(moved, 1) * 1e6:.1f} µs per event, batches of {_MOVE_BATCH})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mariadb", action="store_true", help="a private MariaDB")
    args = parser.parse_args()
    run = _mariadb if args.mariadb else _postgres
    results, notes = run(args.rows, args.rounds)
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
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
