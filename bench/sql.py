"""Benchmark: the SQL adapter on PostgreSQL or MariaDB against the driver alone, in one run.

Starts a private PostgreSQL (``initdb``/``pg_ctl`` on PATH; as root they run
as the ``postgres`` user) or, with ``--mariadb``, a private MariaDB
(``tests/mariadb.py``), fills ``tasks`` with 256 rows and measures, in
paired rounds (the yardstick, then the connector, back to back):

- the yardstick: the same statements through the driver's own async pool
  alone (15 connections, its defaults) in this process, with no WebSocket,
  signing or JSON in the way: psycopg's ``AsyncConnectionPool`` (a read is
  BEGIN, SELECT and, when the connection goes back, ROLLBACK), or asyncmy's
  ``create_pool`` (autocommit off: a read is SELECT, then ROLLBACK, which
  asyncmy's pool needs to keep the connection). The ``driver-ac`` rows show
  the same reads in autocommit (one round trip, as the adapter does them),
  for reference. A commit is the adapter's statements, each its own round
  trip (the adapter batches the last ones): on MariaDB the ledger INSERT,
  the UPDATE, the row read back, GET_LOCK, the outbox INSERT, the ledger
  UPDATE, COMMIT and RELEASE_LOCK;
- the connector: ``ablo-connector run --database-url … --models …`` as its own
  process, driven by the engine side of ``bench/run.py`` (pre-signed request
  frames, every request its own ``webhook-id``, closed loop on 127.0.0.1);

for ``load`` by id, ``list`` (limit 50, ``done = false``, ``priority >= 2``,
ordered by ``due_at``) and ``commit`` (one UPDATE with its ledger and
outbox rows), each at 1 and 64 in flight. The ratios are printed against
the driver alone and against it in autocommit.

    python bench/sql.py                       # 3 rounds, medians
    python bench/sql.py --rounds 5 --pool-size 15
    python bench/sql.py --mariadb             # MariaDB, against asyncmy alone
    python bench/sql.py --sqlite              # the connector on a SQLite file (no yardstick)
    python bench/sql.py --connector-repo DIR  # serve with another checkout (before/after)

Prints a table, the connector's resident memory (once attached, its peak,
and at the end) and one JSON line. Nothing here asserts on time: the
targets are read off the output (see the README).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.server import serve
from websockets.typing import Subprotocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import (  # noqa: E402
    KEY,
    Engine,
    percentile,
    presign,
    proc_cpu_seconds,
    proc_status,
)
from tests.mariadb import PrivateMariaDB  # noqa: E402  (standard library only)
from tests.postgres import PrivatePostgres  # noqa: E402  (standard library and psycopg only)

ROWS = 256
OUTBOX_LOCK = int.from_bytes(b"abloOutb", "big", signed=True)
COLUMNS = "id, title, done, priority, due_at, archived_at, estimate"
TASKS_DDL = {
    "postgresql": """CREATE TABLE tasks (
        id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT false,
        priority INTEGER, due_at TIMESTAMPTZ, archived_at TIMESTAMPTZ, estimate DOUBLE PRECISION)""",
    "sqlite": """CREATE TABLE tasks (
        id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT 0,
        priority INTEGER, due_at TIMESTAMP, archived_at TIMESTAMP, estimate REAL)""",
    "mysql": """CREATE TABLE tasks (
        id VARCHAR(64) PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT false,
        priority INTEGER, due_at DATETIME(6), archived_at DATETIME(6), estimate DOUBLE)""",
}
# The outbox lock the adapter takes on MySQL and MariaDB (dialects/mysql.py).
MYSQL_OUTBOX_LOCK = "LEFT(CONCAT('ablo_outbox.', DATABASE()), 64)"
# A list page with an equality and a range filter and one order, and the
# SQL the adapter runs for it on each database (NULLs last, then the id).
LIST_QUERY = {"where": [["done", False], ["priority", ">=", 2]], "orderBy": "dueAt", "limit": 50}
LIST_SQL = {
    "postgresql": f"SELECT {COLUMNS} FROM tasks WHERE done = %s AND priority >= %s "
    "ORDER BY due_at ASC NULLS LAST, id ASC LIMIT %s",
    "mysql": f"SELECT {COLUMNS} FROM tasks WHERE done = %s AND priority >= %s "
    "ORDER BY due_at IS NULL, due_at ASC, id ASC LIMIT %s",
}
OPERATIONS = ("load", "list", "commit")
LEVELS = (1, 64)


@dataclass
class Sample:
    operation: str
    path: str
    in_flight: int
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    connector_cpu_percent: float
    errors: int


def rows_sql(zone: str = "Z") -> list[tuple[Any, ...]]:
    return [
        (
            f"t{n}",
            f"Task {n}",
            n % 3 == 0,
            n % 5,
            f"2026-01-{1 + n % 28:02}T09:00:00{zone}",
            None,
            n / 4,
        )
        for n in range(ROWS)
    ]


def prepare_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(TASKS_DDL["postgresql"])
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO tasks ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", rows_sql()
            )
        connection.execute("ANALYZE tasks")


def prepare_mariadb(server: PrivateMariaDB) -> None:
    import pymysql

    connection = pymysql.connect(
        host="127.0.0.1", port=server.port, user="root", database="test", autocommit=True
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(TASKS_DDL["mysql"])
            cursor.executemany(
                f"INSERT INTO tasks ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [(*row[:4], row[4].replace("T", " "), *row[5:]) for row in rows_sql(zone="")],
            )
            cursor.execute("ANALYZE TABLE tasks")
    finally:
        connection.close()


def prepare_sqlite(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as connection:
        connection.execute(TASKS_DDL["sqlite"])
        connection.executemany(
            f"INSERT INTO tasks ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows_sql()
        )


def request_bodies(operation: str, count: int, tag: str) -> list[str]:
    def body(i: int) -> dict[str, Any]:
        if operation == "load":
            return {"type": "load", "model": "task", "id": f"t{i % ROWS}"}
        if operation == "list":
            return {"type": "list", "model": "task", "query": LIST_QUERY}
        return {
            "type": "commit",
            "correlationId": f"{tag}_{i}",
            "operations": [
                {
                    "type": "UPDATE",
                    "model": "task",
                    "id": f"t{i % ROWS}",
                    "input": {"title": f"{tag} {i}"},
                }
            ],
        }

    return [json.dumps(body(i), separators=(",", ":")) for i in range(count)]


# ------------------------------------------------------------ the yardstick


class Yardstick:
    """Drives one of its operations closed-loop, ``in_flight`` at a time."""

    async def drive(
        self, operation: str, count: int, in_flight: int, tag: str
    ) -> tuple[list[float], int, float]:
        call: Callable[[int, str], Awaitable[None]] = getattr(self, operation)
        latencies: list[float] = []
        errors = 0
        numbers = iter(range(count))

        async def worker() -> None:
            nonlocal errors
            for i in numbers:
                sent = time.perf_counter()
                try:
                    await call(i, tag)
                except Exception:
                    errors += 1
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return latencies, errors, time.perf_counter() - started


class Driver(Yardstick):
    """The same statements through psycopg's async pool, in this process."""

    name = "psycopg's pool with its defaults"

    def __init__(self, url: str, autocommit: bool = False) -> None:
        from psycopg_pool import AsyncConnectionPool

        self.pool = AsyncConnectionPool(
            url, min_size=15, max_size=15, kwargs={"autocommit": autocommit}, open=False
        )

    async def open(self) -> None:
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.pool.close()

    async def load(self, i: int, tag: str) -> None:
        async with self.pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE id = %s LIMIT 1", (f"t{i % ROWS}",)
            )
            await cursor.fetchone()

    async def list(self, i: int, tag: str) -> None:
        async with self.pool.connection() as connection:
            cursor = await connection.execute(LIST_SQL["postgresql"], (False, 2, 51))
            await cursor.fetchall()

    async def commit(self, i: int, tag: str) -> None:
        from psycopg.types.json import Jsonb

        key, task = f"{tag}_{i}", f"t{i % ROWS}"
        async with self.pool.connection() as connection, connection.transaction():
            # (A transaction whatever the pool's mode: psycopg opens one.)
            await connection.execute(
                "INSERT INTO ablo_idempotency (client_tx_id, response, request_hash, expires_at, "
                "created_at) VALUES (%s, '[]', %s, now() + interval '30 days', now()) "
                "ON CONFLICT (client_tx_id) DO NOTHING RETURNING client_tx_id",
                (key, "0" * 64),
            )
            cursor = await connection.execute(
                f"UPDATE tasks SET title = %s WHERE id = %s RETURNING {COLUMNS}",
                (f"{tag} {i}", task),
            )
            row = await cursor.fetchone()
            data = {"id": task, "title": row[1] if row else None}
            await connection.execute("SELECT pg_advisory_xact_lock(%s)", (OUTBOX_LOCK,))
            await connection.execute(
                "INSERT INTO ablo_outbox (id, model, entity_id, type, data, correlation_id, "
                "occurred_at) VALUES (%s, 'task', %s, 'UPDATE', %s, %s, %s)",
                (f"{key}:0", task, Jsonb(data), key, time.time_ns() // 1_000_000),
            )
            await connection.execute(
                "UPDATE ablo_idempotency SET response = %s WHERE client_tx_id = %s",
                (Jsonb([data]), key),
            )


class AsyncmyDriver(Yardstick):
    """The same statements through asyncmy's pool, in this process."""

    name = "asyncmy's pool with its defaults"

    def __init__(self, server: PrivateMariaDB, autocommit: bool = False) -> None:
        self._server = server
        self._autocommit = autocommit
        self.pool: Any = None

    async def open(self) -> None:
        import asyncmy

        self.pool = await asyncmy.create_pool(
            minsize=15, maxsize=15, host="127.0.0.1", port=self._server.port, user="root",
            database="test", charset="utf8mb4", autocommit=self._autocommit,
        )  # fmt: skip

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()

    async def _read(self, sql: str, args: tuple[Any, ...]) -> None:
        async with self.pool.acquire() as connection:
            async with connection.cursor() as cursor:
                await cursor.execute(sql, args)
                await cursor.fetchall()
            if not self._autocommit:
                await connection.rollback()  # else the pool drops it, mid-transaction

    async def load(self, i: int, tag: str) -> None:
        await self._read(f"SELECT {COLUMNS} FROM tasks WHERE id = %s LIMIT 1", (f"t{i % ROWS}",))

    async def list(self, i: int, tag: str) -> None:
        await self._read(LIST_SQL["mysql"], (False, 2, 51))

    async def commit(self, i: int, tag: str) -> None:
        key, task = f"{tag}_{i}", f"t{i % ROWS}"
        async with self.pool.acquire() as connection:
            try:
                await connection.begin()
                async with connection.cursor() as cursor:
                    await cursor.execute(
                        "INSERT INTO ablo_idempotency (client_tx_id, response, request_hash, "
                        "expires_at, created_at) VALUES (%s, '[]', %s, "
                        "NOW(6) + INTERVAL 30 DAY, NOW(6))",
                        (key, "0" * 64),
                    )
                    await cursor.execute(
                        "UPDATE tasks SET title = %s WHERE id = %s", (f"{tag} {i}", task)
                    )
                    await cursor.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = %s", (task,))
                    row = await cursor.fetchone()
                    data = json.dumps({"id": task, "title": row[1] if row else None})
                    await cursor.execute(f"SELECT GET_LOCK({MYSQL_OUTBOX_LOCK}, 30)")
                    await cursor.fetchall()
                    await cursor.execute(
                        "INSERT INTO ablo_outbox (id, model, entity_id, type, data, "
                        "correlation_id, occurred_at) VALUES (%s, 'task', %s, 'UPDATE', %s, %s, %s)",
                        (f"{key}:0", task, data, key, time.time_ns() // 1_000_000),
                    )
                    await cursor.execute(
                        "UPDATE ablo_idempotency SET response = %s WHERE client_tx_id = %s",
                        (f"[{data}]", key),
                    )
                await connection.commit()
            finally:
                async with connection.cursor() as cursor:
                    await cursor.execute(f"DO RELEASE_LOCK({MYSQL_OUTBOX_LOCK})")


# ------------------------------------------------------------ the connector


def spawn_connector(
    repo: Path, port: int, database_url: str, models: Path, extra: list[str], log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ABLO_API_KEY": KEY,
        "ABLO_DATABASE_URL": database_url,
        "PYTHONPATH": str(repo),
    }
    args = [
        sys.executable, "-m", "connector", "run", "--base-url", f"http://127.0.0.1:{port}",
        "--models", str(models), "--log-level", "warning", *extra,
    ]  # fmt: skip
    with open(log, "ab") as output:
        return subprocess.Popen(args, cwd=repo, env=env, stdout=output, stderr=output)


def migrate(repo: Path, database_url: str) -> None:
    env = {**os.environ, "ABLO_DATABASE_URL": database_url, "PYTHONPATH": str(repo)}
    subprocess.run(
        [sys.executable, "-m", "connector", "migrate"], cwd=repo, env=env, check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def sample(
    operation: str, path: str, level: int, latencies: list[float], errors: int, seconds: float,
    cpu: float,
) -> Sample:  # fmt: skip
    latencies.sort()
    return Sample(
        operation, path, level, len(latencies), round(len(latencies) / seconds, 1),
        round(percentile(latencies, 0.50), 3), round(percentile(latencies, 0.95), 3),
        round(percentile(latencies, 0.99), 3), round(cpu, 1), errors,
    )  # fmt: skip


def counts(operation: str, level: int, scale: float) -> int:
    base = {"load": 6000, "list": 3000, "commit": 3000}[operation]
    return max(200, int((base if level > 1 else base // 3) * scale))


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    repo = Path(args.connector_repo).resolve() if args.connector_repo else REPO
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ablo-bench-")))
        driver: Yardstick | None = None
        reference: Yardstick | None = None
        if args.sqlite:
            database = directory / "bench.db"
            prepare_sqlite(database)
            url = f"sqlite:///{database}"
        elif args.mariadb:
            mariadb = PrivateMariaDB()
            stack.callback(mariadb.close)
            mariadb.start()
            url = mariadb.dsn
            prepare_mariadb(mariadb)
            driver, reference = AsyncmyDriver(mariadb), AsyncmyDriver(mariadb, autocommit=True)
        else:
            server = PrivatePostgres()
            stack.callback(server.close)
            server.start()
            url = server.dsn
            prepare_postgres(url)
            driver, reference = Driver(url), Driver(url, autocommit=True)
        migrate(repo, url)
        models = directory / "models.toml"
        models.write_text('[models.task]\ntable = "tasks"\n')
        log = directory / "connector.log"
        extra = ["--pool-size", str(args.pool_size)] if args.pool_size else []

        engine = Engine()
        async with serve(
            engine.handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ablo.source.v1")],
            compression=None, max_size=None,
        ) as server_socket:  # fmt: skip
            port = server_socket.sockets[0].getsockname()[1]
            peer = spawn_connector(repo, port, url, models, extra, log)
            try:
                try:
                    await asyncio.wait_for(engine.attached.wait(), 30)
                except TimeoutError:
                    raise SystemExit(f"the connector did not attach:\n{log.read_text()}") from None
                for pool in (driver, reference):
                    if pool is not None:
                        await pool.open()
                started_kib = proc_status(peer.pid, "VmRSS")
                result = await rounds(args, engine, peer, driver, reference)
                result["connector_rss_mib"] = {
                    "attached": round(started_kib / 1024, 1),
                    "peak": round(proc_status(peer.pid, "VmHWM") / 1024, 1),
                    "end": round(proc_status(peer.pid, "VmRSS") / 1024, 1),
                }
                return result
            finally:
                for pool in (driver, reference):
                    if pool is not None:
                        await pool.close()
                peer.terminate()
                peer.wait(10)


async def rounds(
    args: argparse.Namespace,
    engine: Engine,
    peer: subprocess.Popen[bytes],
    driver: Yardstick | None,
    reference: Yardstick | None,
) -> dict[str, Any]:
    # Warm both paths: connections opened, statements prepared, caches filled.
    for operation in OPERATIONS:
        frames = presign(request_bodies(operation, 1000, f"warm_{operation}"), f"warm_{operation}")
        _, errors, _ = await engine.drive(frames, 16)
        if errors:
            raise SystemExit(f"the connector answered {errors} warm-up {operation}s with errors")
        if driver is not None:
            await driver.drive(operation, 1000, 16, f"dwarm_{operation}")

    samples: dict[tuple[str, str, int], list[Sample]] = {}
    for round_ in range(args.rounds):
        for operation in args.operations:
            for level in LEVELS:
                count = counts(operation, level, args.scale)
                tag = f"{operation}_{level}_{round_}"
                yardsticks = [("driver", driver)]
                if operation != "commit":
                    yardsticks.append(("driver-ac", reference))
                for path, pool in yardsticks:
                    if pool is not None:
                        latencies, errors, seconds = await pool.drive(
                            operation, count, level, f"{path}{tag}"
                        )
                        samples.setdefault((operation, path, level), []).append(
                            sample(operation, path, level, latencies, errors, seconds, 0.0)
                        )
                frames = presign(request_bodies(operation, count, f"c{tag}"), f"c{tag}")
                cpu = proc_cpu_seconds(peer.pid)
                latencies, errors, seconds = await engine.drive(frames, level)
                cpu = 100 * (proc_cpu_seconds(peer.pid) - cpu) / seconds
                samples.setdefault((operation, "connector", level), []).append(
                    sample(operation, "connector", level, latencies, errors, seconds, cpu)
                )

    def median_of(key: tuple[str, str, int], field: str) -> float:
        return statistics.median(getattr(s, field) for s in samples[key])

    table = [
        Sample(
            operation,
            path,
            level,
            samples[(operation, path, level)][0].requests,
            median_of((operation, path, level), "rps"),
            median_of((operation, path, level), "p50_ms"),
            median_of((operation, path, level), "p95_ms"),
            median_of((operation, path, level), "p99_ms"),
            median_of((operation, path, level), "connector_cpu_percent"),
            sum(s.errors for s in samples[(operation, path, level)]),
        )
        for operation in args.operations
        for path in ("driver", "driver-ac", "connector")
        for level in LEVELS
        if (operation, path, level) in samples
    ]
    result: dict[str, Any] = {"samples": [asdict(s) for s in table]}
    if driver is not None:
        result["yardstick"] = driver.name
        ratios: dict[str, dict[str, Any]] = {}
        for operation in args.operations:

            def paired(
                level: int, field: str, path: str = "driver", op: str = operation
            ) -> list[float]:
                pairs = zip(
                    samples[(op, path, level)], samples[(op, "connector", level)], strict=True
                )
                return [getattr(c, field) / getattr(d, field) for d, c in pairs]

            for path, name in (("driver", operation), ("driver-ac", f"{operation} (autocommit)")):
                if (operation, path, 1) not in samples:
                    continue
                throughput, latency = paired(64, "rps", path), paired(1, "p50_ms", path)
                tail = paired(64, "p99_ms", path)
                ratios[name] = {
                    "rps_at_64": round(statistics.median(throughput), 3),
                    "p50_at_1": round(statistics.median(latency), 3),
                    "p99_at_64": round(statistics.median(tail), 3),
                    "rps_at_64_range": [round(min(throughput), 3), round(max(throughput), 3)],
                    "p50_at_1_range": [round(min(latency), 3), round(max(latency), 3)],
                    "p99_at_64_range": [round(min(tail), 3), round(max(tail), 3)],
                }
        result["ratios"] = ratios
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        "operation  path        in-flight    req/s   p50 ms   p95 ms   p99 ms  connector CPU%  errors"
    ]
    for s in result["samples"]:
        cpu = f"{s['connector_cpu_percent']:>15.0f}" if s["path"] == "connector" else " " * 15
        lines.append(
            f"{s['operation']:<10} {s['path']:<10} {s['in_flight']:>10} {s['rps']:>8.0f}"
            f" {s['p50_ms']:>8.3f} {s['p95_ms']:>8.3f} {s['p99_ms']:>8.3f} {cpu} {s['errors']:>7}"
        )
    rss = result.get("connector_rss_mib")
    if rss:
        lines.append(
            f"connector RSS: {rss['attached']} MiB once attached, peak {rss['peak']} MiB, "
            f"{rss['end']} MiB at the end"
        )
    for operation, ratio in result.get("ratios", {}).items():
        lines.append(
            f"{operation}: connector / "
            f"{'driver in autocommit' if operation.endswith('(autocommit)') else 'driver alone'}: "
            f"throughput at 64 {ratio['rps_at_64']}x "
            f"({ratio['rps_at_64_range'][0]}-{ratio['rps_at_64_range'][1]}), "
            f"p50 at 1 {ratio['p50_at_1']}x, p99 at 64 {ratio['p99_at_64']}x "
            f"(medians of the per-round ratios; the yardstick: {result['yardstick']})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the requests per round (load at 64: 6000)",
    )
    parser.add_argument("--pool-size", type=int, help="the connector's --pool-size")
    parser.add_argument("--sqlite", action="store_true", help="serve a SQLite file instead")
    parser.add_argument(
        "--mariadb", action="store_true", help="serve a private MariaDB instead (asyncmy alone)"
    )
    parser.add_argument("--connector-repo", help="serve with the connector of this checkout")
    parser.add_argument(
        "--operations", default=",".join(OPERATIONS), help="a subset of load,list,commit"
    )
    args = parser.parse_args()
    args.operations = [op for op in args.operations.split(",") if op]
    # Stopped from outside: still stop the private database and the connector.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if set(args.operations) - set(OPERATIONS):
        parser.error("--operations takes load, list and commit")
    if args.sqlite and args.mariadb:
        parser.error("give --sqlite or --mariadb, not both")
    result = asyncio.run(measure(args))
    print(render(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
