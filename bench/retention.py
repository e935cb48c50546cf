"""Benchmark: retention and the outbox at size, on a private PostgreSQL.

Starts a private PostgreSQL (``initdb``/``pg_ctl`` on PATH; as root they run
as the ``postgres`` user, see ``tests/postgres.py``) and measures, through
the SQL adapter itself (``SQLSource``):

1. what pruning costs everyone else: an outbox of ``--prune-rows`` events
   (default 1,000,000, built with ``generate_series``), all older than the
   retention and read by the engine. For ``--seconds`` a loop of commits (one
   UPDATE each, with its ledger row and event) and a loop of ``events`` pages
   at the tail run side by side with no pruning; then the same loops again
   while another process prunes the whole outbox, one batch at a time
   (``SQLSource.prune``). Prints p50/p99/max of each, both phases, and the
   prune batches' own durations;
2. ledger pruning when nothing has expired yet (the usual case: rows live 30
   days): one prune with ``--ledger-rows`` ledger rows, without and with an
   index on ``expires_at``;
3. ``events`` after a cursor and ``load`` by id with small tables (10,000
   rows each) and with ``--outbox-rows`` outbox events and ``--table-rows``
   served rows, two databases in the same server measured in alternating
   rounds (``--rounds``), so that the rest of the machine's work weighs on
   both sizes alike; and the plans PostgreSQL chose for the adapter's own
   statements with the pages each touched (``auto_explain`` with ``analyze``
   and ``buffers``; a ``Seq Scan`` is counted).

    python bench/retention.py                                    # quick
    python bench/retention.py --outbox-rows 10000000 --table-rows 1000000

Nothing here asserts on time: the figures are read off the output (see the
README).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connector.adapters.sql import SQLSource, create_database_engine, migrate
from connector.wire.bodies import CommitRequest
from tests.postgres import PrivatePostgres

MODELS = {"models": {"task": {"table": "tasks"}}}
NO_CONTEXT = cast(Any, None)  # the adapter's methods do not read the request context
SMALL = 10_000

_TASKS = """CREATE TABLE tasks (
  id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT false,
  priority INTEGER, updated_at TIMESTAMPTZ)"""


def fill_tasks(connection: Any, first: int, last: int) -> None:
    connection.execute(
        "INSERT INTO tasks (id, title, priority, updated_at) "
        "SELECT 't' || n, 'task ' || n, n %% 5, now() FROM generate_series(%s::bigint, %s::bigint) AS n",
        (first, last),
    )


def fill_outbox(connection: Any, first: int, last: int, age: str) -> None:
    """Events ``first``..``last`` (their cursors, from the sequence), ``age`` old."""
    connection.execute(
        "INSERT INTO ablo_outbox (id, model, entity_id, type, data, correlation_id, "
        "occurred_at, created_at) "
        "SELECT 'bench:' || n, 'task', 't' || (n %% 1000), 'UPDATE', "
        "jsonb_build_object('id', 't' || (n %% 1000), 'title', 'task', 'priority', n %% 5), "
        "'bench:' || n, 0, now() - %s::interval FROM generate_series(%s::bigint, %s::bigint) AS n",
        (age, first, last),
    )


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    if not ordered:
        return "no samples"
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1e3:7.2f} ms  p99 {p99 * 1e3:7.2f} ms  "
        f"max {ordered[-1] * 1e3:7.2f} ms  (n={len(ordered)})"
    )


async def timed_loop(
    work: Callable[[int], Awaitable[Any]], until: Callable[[], bool], samples: list[float]
) -> None:
    count = 0
    while not until():
        started = time.perf_counter()
        await work(count)
        samples.append(time.perf_counter() - started)
        count += 1


def commit_request(tag: str, count: int) -> CommitRequest:
    return CommitRequest.model_validate(
        {
            "correlationId": f"{tag}-{count}",
            "operations": [
                {
                    "type": "UPDATE",
                    "model": "task",
                    "id": f"t{count % 1000 + 1}",
                    "input": {"priority": count % 7},
                }
            ],
        }
    )


def prune_everything(url: str, read_past: int, done: Any, durations: Any) -> None:
    """In its own process: prune every event up to ``read_past``, one batch
    per call (a budget shorter than one batch stops after it), timing each."""

    async def main() -> None:
        source = SQLSource(url, MODELS, outbox_retention=3600.0)
        source.prepare()
        await source.events(str(read_past), 1, NO_CONTEXT)  # the engine has read this far
        while True:
            started = time.perf_counter()
            events, _ = await source.prune(budget=0.0005)
            durations.put(time.perf_counter() - started)
            if events == 0:
                break
        await source.aclose()

    asyncio.run(main())
    done.set()


def lock_waits(server: PrivatePostgres, since: int) -> int:
    """How many times a session waited 1 ms or more for a lock since ``since``
    (a log offset): ``log_lock_waits`` logs each such wait."""
    with (server.directory / "log").open(errors="replace") as text:
        text.seek(since)
        return text.read().count("still waiting for")


def log_size(server: PrivatePostgres) -> int:
    return (server.directory / "log").stat().st_size


async def run_phase(
    source: SQLSource, url: str, rows: int, seconds: float, phase: str, batches: list[float]
) -> tuple[list[float], list[float]]:
    """Commits and ``events`` pages side by side for ``seconds``; while
    ``phase`` is "pruning", also until another process has pruned every event."""
    commits: list[float] = []
    pages: list[float] = []
    cursor = [str(rows)]

    async def commit(count: int) -> None:
        await source.commit(commit_request(phase, count), NO_CONTEXT)

    async def page(_: int) -> None:
        answer = await source.events(cursor[0], 100, NO_CONTEXT)
        cursor[0] = answer.next_cursor or cursor[0]

    context = multiprocessing.get_context("spawn")
    done, durations = context.Event(), context.Queue()
    process = None
    if phase == "pruning":
        process = context.Process(target=prune_everything, args=(url, rows, done, durations))
        process.start()
    else:
        done.set()
    started = time.monotonic()
    deadline = started + seconds

    def finished() -> bool:
        return done.is_set() and time.monotonic() > deadline

    await asyncio.gather(timed_loop(commit, finished, commits), timed_loop(page, finished, pages))
    if process is not None:
        process.join()
        while not durations.empty():
            batches.append(durations.get())
        print(f"pruned {rows:,} events in {time.monotonic() - started:.1f} s")
    return commits, pages


async def prune_phase(server: PrivatePostgres, url: str, rows: int, seconds: float) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        # Every lock wait of 1 ms or more is logged, and counted per phase.
        connection.execute("ALTER SYSTEM SET log_lock_waits = on")
        connection.execute("ALTER SYSTEM SET deadlock_timeout = '1ms'")
        connection.execute("SELECT pg_reload_conf()")
        fill_tasks(connection, 1, 1000)
        fill_outbox(connection, 1, rows, "30 days")
        connection.execute("VACUUM ANALYZE ablo_outbox")
        connection.execute("VACUUM ANALYZE tasks")
    source = SQLSource(url, MODELS, outbox_retention=None)  # this one never prunes
    source.prepare()
    results: dict[str, list[float]] = {}
    batches: list[float] = []
    waits: dict[str, int] = {}
    try:
        for phase in ("idle", "pruning"):
            since = log_size(server)
            commits, pages = await run_phase(source, url, rows, seconds, phase, batches)
            results[f"commit, {phase}"], results[f"events, {phase}"] = commits, pages
            waits[phase] = lock_waits(server, since)
    finally:
        await source.aclose()
    with psycopg.connect(url, autocommit=True) as connection:
        left = connection.execute("SELECT count(*) FROM ablo_outbox WHERE cursor <= %s", (rows,))
        print(f"events left at or below the read cursor: {left.fetchone()[0]}")  # type: ignore[index]
    for label, samples in results.items():
        print(f"{label:<18} {percentiles(samples)}")
    print(f"{'prune batch':<18} {percentiles(batches)}")
    for phase, count in waits.items():
        print(f"lock waits of 1 ms or more, {phase}: {count}")


async def ledger_phase(url: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO ablo_idempotency (client_tx_id, response, expires_at) "
            "SELECT 'bench-' || n, '[]', now() + interval '30 days' FROM generate_series(1, %s::bigint) n",
            (rows,),
        )
        # migrate creates the index; dropped first to show what it saves.
        connection.execute("DROP INDEX IF EXISTS ablo_idempotency_expires_at")
        connection.execute("VACUUM ANALYZE ablo_idempotency")
    source = SQLSource(url, MODELS)
    source.prepare()
    try:
        for label in ("without an index", "with an index on expires_at"):
            if label.startswith("with an"):
                with psycopg.connect(url, autocommit=True) as connection:
                    connection.execute(
                        "CREATE INDEX IF NOT EXISTS ablo_idempotency_expires_at "
                        "ON ablo_idempotency (expires_at)"
                    )
                    connection.execute("ANALYZE ablo_idempotency")
            samples = []
            for _ in range(5):
                started = time.perf_counter()
                await source.prune()
                samples.append(time.perf_counter() - started)
            print(f"ledger prune, {rows:,} rows, none expired, {label}: {percentiles(samples)}")
    finally:
        await source.aclose()


async def measure_reads(
    url: str, outbox_rows: int, table_rows: int, count: int, seed: int
) -> tuple[list[float], list[float]]:
    """``count`` events pages (100 after a random cursor) and loads by a random id."""
    source = SQLSource(url, MODELS, outbox_retention=None)
    source.prepare()
    try:
        events: list[float] = []
        loads: list[float] = []
        chooser = random.Random(seed)
        for _ in range(count):
            after = chooser.randrange(0, max(1, outbox_rows - 100))
            started = time.perf_counter()
            page = await source.events(str(after), 100, NO_CONTEXT)
            events.append(time.perf_counter() - started)
            assert len(page.events) == 100
            started = time.perf_counter()
            row = await source.load("task", f"t{chooser.randrange(1, table_rows + 1)}", NO_CONTEXT)
            loads.append(time.perf_counter() - started)
            assert row is not None
        return events, loads
    finally:
        await source.aclose()


_BUFFERS = re.compile(r"Buffers: shared(?: hit=(\d+))?(?: read=(\d+))?")


def check_plans(server: PrivatePostgres, url: str, outbox_rows: int, table_rows: int) -> None:
    """The plans of the adapter's own statements as auto_explain logs them
    (run, with the pages each touched): an index scan touches the same few
    pages at any size; a Seq Scan would not."""
    import psycopg

    log = server.directory / "log"
    start = log.stat().st_size
    settings = {
        "session_preload_libraries": "'auto_explain'",
        "auto_explain.log_min_duration": "0",
        "auto_explain.log_analyze": "on",
        "auto_explain.log_buffers": "on",
    }
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("LOAD 'auto_explain'")
        for name, value in settings.items():
            connection.execute(f"ALTER SYSTEM SET {name} = {value}")
        connection.execute("SELECT pg_reload_conf()")
    try:
        asyncio.run(measure_reads(url, outbox_rows, table_rows, 20, seed=11))
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("LOAD 'auto_explain'")
            for name in settings:
                connection.execute(f"ALTER SYSTEM RESET {name}")
            connection.execute("SELECT pg_reload_conf()")
    with log.open(errors="replace") as text:
        text.seek(start)
        logged = text.read()
    plans = [chunk for chunk in logged.split("LOG:  duration:") if "Query Text" in chunk]
    mine = {
        table: [plan for plan in plans if f"FROM {table}" in plan and "pg_catalog" not in plan]
        for table in ("ablo_outbox", "tasks")
    }
    for table, found in mine.items():
        scans = sum(f"Seq Scan on {table}" in plan for plan in found)
        shape = [
            line.strip().split("  (")[0]
            for line in found[0].splitlines()
            if "->" in line or "Limit" in line
        ]
        pages = []
        for plan in found:
            counted = _BUFFERS.search(plan)  # the first is the whole plan's
            if counted is not None:
                pages.append(sum(int(group or 0) for group in counted.groups()))
        print(
            f"  plans on {table}: {len(found)}, with a Seq Scan: {scans}; "
            f"pages touched per statement: median {statistics.median(pages) if pages else '?'}, "
            f"max {max(pages, default='?')}; {' | '.join(shape)}"
        )


def build_size(url: str, outbox_rows: int, table_rows: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        fill_tasks(connection, 1, table_rows)
        fill_outbox(connection, 1, outbox_rows, "1 hour")
        connection.execute("VACUUM ANALYZE")
        # What the build wrote goes to disk now, not while the reads are timed.
        connection.execute("CHECKPOINT")


def size_phase(server: PrivatePostgres, outbox_rows: int, table_rows: int, rounds: int) -> None:
    """Both sizes in one server, measured in alternating rounds, so that what
    else the machine does weighs on both alike."""
    sizes = {
        "small": (fresh_database(server, "size_small"), SMALL, SMALL),
        "large": (fresh_database(server, "size_large"), outbox_rows, table_rows),
    }
    for name, (url, events_rows, rows) in sizes.items():
        started = time.monotonic()
        build_size(url, events_rows, rows)
        print(
            f"{name}: {events_rows:,} events and {rows:,} rows, "
            f"built in {time.monotonic() - started:.0f} s"
        )
        check_plans(server, url, events_rows, rows)
    medians: dict[str, dict[str, list[float]]] = {
        name: {"events": [], "load": []} for name in sizes
    }
    for round_ in range(rounds):
        for name, (url, events_rows, rows) in sizes.items():
            events, loads = asyncio.run(measure_reads(url, events_rows, rows, 1000, seed=round_))
            medians[name]["events"].append(statistics.median(events))
            medians[name]["load"].append(statistics.median(loads))
            print(f"round {round_ + 1}, {name}: events {percentiles(events)}")
            print(f"round {round_ + 1}, {name}: load   {percentiles(loads)}")
    for operation in ("events", "load"):
        ratios = [
            large / small
            for small, large in zip(
                medians["small"][operation], medians["large"][operation], strict=True
            )
        ]
        print(
            f"{operation}: p50 at {outbox_rows:,} events / {table_rows:,} rows ÷ p50 at "
            f"{SMALL:,} / {SMALL:,}, per round: {', '.join(f'{ratio:.2f}' for ratio in ratios)}"
            f" (median {statistics.median(ratios):.2f})"
        )


def fresh_database(server: PrivatePostgres, name: str) -> str:
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    url = server.dsn.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(_TASKS)
    engine = create_database_engine(url)
    migrate(engine)
    engine.dispose()
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prune-rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="each phase, at least")
    parser.add_argument("--ledger-rows", type=int, default=1_000_000)
    parser.add_argument("--outbox-rows", type=int, default=1_000_000)
    parser.add_argument("--table-rows", type=int, default=100_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of the size phase"
    )
    parser.add_argument("--only", choices=("prune", "ledger", "size"), default=None)
    args = parser.parse_args()
    if args.outbox_rows < SMALL or args.table_rows < SMALL:
        parser.error(f"--outbox-rows and --table-rows are at least {SMALL:,}")
    server = PrivatePostgres()
    server.start()
    try:
        if args.only in (None, "prune"):
            asyncio.run(
                prune_phase(server, fresh_database(server, "prune"), args.prune_rows, args.seconds)
            )
        if args.only in (None, "ledger"):
            asyncio.run(ledger_phase(fresh_database(server, "ledger"), args.ledger_rows))
        if args.only in (None, "size"):
            size_phase(server, args.outbox_rows, args.table_rows, args.rounds)
    finally:
        server.close()


if __name__ == "__main__":
    main()
