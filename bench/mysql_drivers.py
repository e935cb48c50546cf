"""Benchmark: which MySQL/MariaDB driver should the SQL adapter use?

Starts a private MariaDB (``tests/mariadb.py``: ``mariadbd`` from Debian's
``mariadb-server``), fills ``tasks`` with 10,000 rows and measures each
driver the way the adapter would run it:

- an asyncio driver (``asyncmy``, ``aiomysql``): 10 connections used
  straight from the event loop, handed out longest waiter first as the
  adapter's own read pool hands out PostgreSQL's (``--driver-pool``: the
  driver's ``create_pool`` instead, which does not keep that order);
  ``asyncmy-prepared`` is asyncmy with its server-side prepared statement
  cache on (``stmt_cache_size``);
- a blocking driver (``pymysql``, ``mysqlclient``): 10 connections, used
  from 10 worker threads through ``loop.run_in_executor``;
- the same through SQLAlchemy 2.0 Core (``sa-*``), set up as the adapter sets
  up PostgreSQL: the engine in autocommit, writes asking for READ COMMITTED,
  one synchronous function per operation, run in a greenlet on the event
  loop (``greenlet_spawn``) for an asyncio driver, in one of 10 worker
  threads for a blocking one; SQLAlchemy's pool, 10 connections.

Operations: ``load`` (one row by primary key, autocommit) at 1 in flight
(latency) and 64 in flight (throughput, p99); ``write`` (one transaction: an
``INSERT … ON DUPLICATE KEY UPDATE`` of a ledger row and an ``UPDATE`` of a
task) at 1 and 64 in flight. Rounds alternate the drivers' order; the table
shows medians over rounds. ``cpu_us`` is this process's CPU time (every
thread) per request: the server runs in its own process; ``stmts/req`` the
statements the server received per request (its ``Questions`` counter).

    python bench/mysql_drivers.py                  # 3 rounds, every driver installed
    python bench/mysql_drivers.py --rounds 5 --drivers asyncmy,pymysql
    python bench/mysql_drivers.py --sqlalchemy-check   # which SQLAlchemy dialects work, how
    python bench/mysql_drivers.py --startup 7          # how long the private server takes to start

Needs ``mariadb-server`` and ``mariadb-client`` (Debian) and the drivers
(``pip install asyncmy aiomysql pymysql mysqlclient``; mysqlclient builds
against ``libmariadb-dev``). Prints a table and one JSON line. Nothing here
asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib
import json
import queue
import random
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.mariadb import PrivateMariaDB, running_mariadb  # noqa: E402  (standard library only)

ROWS = 10_000
POOL_SIZE = 10
LEVELS = (1, 64)
# Requests per measurement, by (operation, in flight): enough for a stable
# p99 at 64 in flight, short enough for several rounds of every driver.
REQUESTS = {("load", 1): 2000, ("load", 64): 10000, ("write", 1): 500, ("write", 64): 4000}
WARM_UP = 300

TASKS_DDL = """CREATE TABLE tasks (
    id VARCHAR(64) PRIMARY KEY, title VARCHAR(255) NOT NULL,
    done BOOLEAN NOT NULL DEFAULT FALSE, priority INT, due_at DATETIME(6),
    archived_at DATETIME(6), estimate DOUBLE)"""
LEDGER_DDL = """CREATE TABLE ledger (
    correlation_id VARCHAR(64) PRIMARY KEY, answer TEXT NOT NULL,
    committed_at DATETIME(6) NOT NULL)"""
LOAD_SQL = (
    "SELECT id, title, done, priority, due_at, archived_at, estimate FROM tasks WHERE id = %s"
)
LEDGER_SQL = (
    "INSERT INTO ledger (correlation_id, answer, committed_at) VALUES (%s, %s, NOW(6)) "
    "ON DUPLICATE KEY UPDATE correlation_id = correlation_id"
)
UPDATE_SQL = "UPDATE tasks SET title = %s WHERE id = %s"
# SQLAlchemy's text() takes named parameters.
SA_LOAD_SQL = LOAD_SQL.replace("%s", ":id")
SA_LEDGER_SQL = LEDGER_SQL.replace("(%s, %s,", "(:correlation_id, :answer,")
SA_UPDATE_SQL = "UPDATE tasks SET title = :title WHERE id = :id"

ASYNC_DRIVERS = ("asyncmy", "asyncmy-prepared", "aiomysql")
THREAD_DRIVERS = ("pymysql", "mysqlclient")
SQLALCHEMY_DRIVERS = ("sa-asyncmy", "sa-aiomysql", "sa-pymysql", "sa-mysqlclient")
ALL_DRIVERS = ASYNC_DRIVERS + THREAD_DRIVERS + SQLALCHEMY_DRIVERS
# The module each driver imports, and SQLAlchemy's name for it.
MODULES = {
    "asyncmy": "asyncmy",
    "aiomysql": "aiomysql",
    "pymysql": "pymysql",
    "mysqlclient": "MySQLdb",
}
SA_DIALECTS = {
    "asyncmy": "asyncmy",
    "aiomysql": "aiomysql",
    "pymysql": "pymysql",
    "mysqlclient": "mysqldb",
}


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    database: str


@dataclass
class Sample:
    driver: str
    operation: str
    in_flight: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    statements: float
    errors: int
    first_error: str = ""


class Driver(Protocol):
    async def open(self) -> None: ...
    async def load(self, key: str) -> Any: ...
    async def write(self, key: str, correlation_id: str) -> None: ...
    async def close(self) -> None: ...


def _module_for(driver: str) -> str:
    return MODULES[driver.removeprefix("sa-").removesuffix("-prepared")]


class FairPool:
    """Connections handed out longest waiter first, as the adapter's read pool
    (``connector/adapters/sql/connections.py``) hands out PostgreSQL's: neither
    asyncmy's pool nor SQLAlchemy's guarantees that order (``--driver-pool``)."""

    def __init__(self, connections: list[Any]) -> None:
        self._idle = connections
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()

    async def acquire(self) -> Any:
        if self._idle and not self._waiters:
            return self._idle.pop()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def release(self, connection: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        connection = await self.acquire()
        try:
            yield connection
        finally:
            self.release(connection)

    async def close(self) -> None:
        for connection in self._idle:
            await connection.ensure_closed()


class AsyncPoolDriver:
    """asyncmy or aiomysql: 10 connections on the event loop, in a
    :class:`FairPool`, or with ``driver_pool`` in the driver's own pool."""

    def __init__(
        self, module_name: str, target: Target, *, prepared: bool = False, driver_pool: bool = False
    ) -> None:
        self._module = importlib.import_module(module_name)
        self._target = target
        self._prepared = prepared
        self._driver_pool = driver_pool
        self._pool: Any = None

    async def open(self) -> None:
        target = self._target
        options: dict[str, Any] = {
            "host": target.host,
            "port": target.port,
            "user": target.user,
            "password": "",
            "db": target.database,
            "charset": "utf8mb4",
            "autocommit": True,
        }
        if self._prepared:
            options["stmt_cache_size"] = 64
        if self._driver_pool:
            self._pool = await self._module.create_pool(
                minsize=POOL_SIZE, maxsize=POOL_SIZE, **options
            )
        else:
            connections = [await self._module.connect(**options) for _ in range(POOL_SIZE)]
            self._pool = FairPool(connections)

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Any]:
        pool: Any = self._pool
        manager: contextlib.AbstractAsyncContextManager[Any] = (
            pool.acquire() if self._driver_pool else pool.connection()
        )
        return manager

    async def load(self, key: str) -> Any:
        async with self._connection() as connection, connection.cursor() as cursor:
            await cursor.execute(LOAD_SQL, (key,))
            return await cursor.fetchall()

    async def write(self, key: str, correlation_id: str) -> None:
        async with self._connection() as connection:
            await connection.begin()
            try:
                async with connection.cursor() as cursor:
                    await cursor.execute(LEDGER_SQL, (correlation_id, "{}"))
                    await cursor.execute(UPDATE_SQL, (f"title {correlation_id}", key))
                await connection.commit()
            except BaseException:
                await connection.rollback()
                raise

    async def close(self) -> None:
        if self._driver_pool:
            self._pool.close()
            await self._pool.wait_closed()
        else:
            await self._pool.close()


class ThreadedDriver:
    """pymysql or mysqlclient: 10 connections, 10 worker threads."""

    def __init__(self, module_name: str, target: Target) -> None:
        self._module = importlib.import_module(module_name)
        self._target = target
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._executor = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="bench-sql")

    async def open(self) -> None:
        target = self._target
        for _ in range(POOL_SIZE):
            self._idle.put(
                self._module.connect(
                    host=target.host,
                    port=target.port,
                    user=target.user,
                    password="",
                    database=target.database,
                    charset="utf8mb4",
                    autocommit=True,
                )
            )

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        connection = self._idle.get()
        try:
            yield connection
        finally:
            self._idle.put(connection)

    def _load(self, key: str) -> Any:
        with self._connection() as connection:
            cursor = connection.cursor()
            cursor.execute(LOAD_SQL, (key,))
            rows = cursor.fetchall()
            cursor.close()
            return rows

    def _write(self, key: str, correlation_id: str) -> None:
        with self._connection() as connection:
            connection.begin()
            try:
                cursor = connection.cursor()
                cursor.execute(LEDGER_SQL, (correlation_id, "{}"))
                cursor.execute(UPDATE_SQL, (f"title {correlation_id}", key))
                cursor.close()
                connection.commit()
            except BaseException:
                connection.rollback()
                raise

    async def load(self, key: str) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._load, key)

    async def write(self, key: str, correlation_id: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._write, key, correlation_id)

    async def close(self) -> None:
        self._executor.shutdown()
        while not self._idle.empty():
            self._idle.get().close()


def _sa_load(engine: Any, key: str) -> Any:
    import sqlalchemy as sa

    with engine.connect() as connection:
        return connection.execute(sa.text(SA_LOAD_SQL), {"id": key}).all()


def _sa_write(engine: Any, key: str, correlation_id: str) -> None:
    import sqlalchemy as sa

    with engine.begin() as connection:
        connection.execute(
            sa.text(SA_LEDGER_SQL), {"correlation_id": correlation_id, "answer": "{}"}
        )
        connection.execute(sa.text(SA_UPDATE_SQL), {"title": f"title {correlation_id}", "id": key})


class SQLAlchemyDriver:
    """SQLAlchemy Core: the same synchronous code per operation, in a greenlet
    on the event loop (asyncio driver) or in a worker thread (blocking one)."""

    def __init__(self, dialect: str, target: Target) -> None:
        self._url = (
            f"mysql+{dialect}://{target.user}@{target.host}:{target.port}/{target.database}"
            "?charset=utf8mb4"
        )
        self._is_async = dialect in ("asyncmy", "aiomysql")
        self._reads: Any = None
        self._writes: Any = None
        self._async_engine: Any = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        import sqlalchemy as sa
        from sqlalchemy.ext.asyncio import create_async_engine

        # As the adapter sets up PostgreSQL: the engine in autocommit (a read
        # is one round trip), writes asking for a transaction.
        settings: dict[str, Any] = {
            "pool_size": POOL_SIZE,
            "max_overflow": 0,
            "isolation_level": "AUTOCOMMIT",
        }
        if self._is_async:
            self._async_engine = create_async_engine(self._url, **settings)
            self._reads = self._async_engine.sync_engine
        else:
            self._reads = sa.create_engine(self._url, **settings)
            self._executor = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="bench-sa")
        self._writes = self._reads.execution_options(isolation_level="READ COMMITTED")
        # Open the pool's connections before measuring, as the other drivers do.
        await asyncio.gather(*(self.load("t0") for _ in range(POOL_SIZE)))

    async def _run(self, work: Callable[..., Any], *args: Any) -> Any:
        if self._is_async:
            from sqlalchemy.util import greenlet_spawn

            return await greenlet_spawn(work, *args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, work, *args)

    async def load(self, key: str) -> Any:
        return await self._run(_sa_load, self._reads, key)

    async def write(self, key: str, correlation_id: str) -> None:
        await self._run(_sa_write, self._writes, key, correlation_id)

    async def close(self) -> None:
        if self._async_engine is not None:
            await self._async_engine.dispose()
        else:
            self._reads.dispose()
        if self._executor is not None:
            self._executor.shutdown()


def make_driver(name: str, target: Target, *, driver_pool: bool = False) -> Driver:
    module = _module_for(name)
    if name.startswith("sa-"):
        return SQLAlchemyDriver(SA_DIALECTS[name.removeprefix("sa-")], target)
    if name in ASYNC_DRIVERS:
        prepared = name.endswith("-prepared")
        return AsyncPoolDriver(module, target, prepared=prepared, driver_pool=driver_pool)
    return ThreadedDriver(module, target)


def installed(name: str) -> bool:
    try:
        importlib.import_module(_module_for(name))
        if name.startswith("sa-"):
            importlib.import_module("sqlalchemy")
    except ImportError:
        return False
    return True


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index] * 1000


def statements_so_far(server: PrivateMariaDB) -> int:
    """The server's count of statements from clients (this one included)."""
    return int(server.execute("SHOW GLOBAL STATUS LIKE 'Questions'").split()[1])


async def measure(
    server: PrivateMariaDB,
    name: str,
    operation: str,
    in_flight: int,
    call: Callable[[int], Awaitable[Any]],
) -> Sample:
    """``in_flight`` callers in a closed loop, sharing one run of requests."""
    requests = REQUESTS[(operation, in_flight)]
    numbers = iter(range(requests))
    latencies: list[float] = []
    errors = 0

    first_error = ""

    async def caller() -> None:
        nonlocal errors, first_error
        for number in numbers:  # one iterator, shared: each number runs once
            started = time.perf_counter()
            try:
                await call(number)
            except Exception as error:
                errors += 1
                first_error = first_error or f"{type(error).__name__}: {error}"
            else:
                latencies.append(time.perf_counter() - started)
            # The daemon's next request arrives as a new task, after the loop
            # has run whatever was ready: a caller that asked again at once
            # would take the connection it just gave back from the tasks
            # waiting for one (every pool here but FairPool lets it).
            await asyncio.sleep(0)

    statements_before = statements_so_far(server)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    statements = statements_so_far(server) - statements_before - 1  # less the SHOW itself
    latencies.sort()
    return Sample(
        name,
        operation,
        in_flight,
        requests,
        requests / wall,
        percentile(latencies, 0.50) if latencies else float("nan"),
        percentile(latencies, 0.99) if latencies else float("nan"),
        cpu / requests * 1e6,
        statements / requests,
        errors,
        first_error,
    )


async def run_driver(
    server: PrivateMariaDB,
    name: str,
    target: Target,
    round_number: int,
    *,
    driver_pool: bool = False,
) -> list[Sample]:
    driver = make_driver(name, target, driver_pool=driver_pool)
    await driver.open()
    picker = random.Random(round_number)
    keys = [f"t{picker.randrange(ROWS)}" for _ in range(max(REQUESTS.values()))]
    tag = f"{name}-{round_number}"
    try:
        for number in range(WARM_UP):
            await driver.load(keys[number])
        samples = []
        for in_flight in LEVELS:
            samples.append(
                await measure(server, name, "load", in_flight, lambda n: driver.load(keys[n]))
            )
        for in_flight in LEVELS:
            prefix = f"{tag}-{in_flight}"  # correlation ids unique across runs

            def write(n: int, prefix: str = prefix) -> Awaitable[None]:
                return driver.write(keys[n], f"{prefix}-{n}")

            samples.append(await measure(server, name, "write", in_flight, write))
        return samples
    finally:
        await driver.close()


def prepare(server: PrivateMariaDB) -> Target:
    values = ",".join(
        f"('t{n}','Task {n}',{n % 3 == 0},{n % 5},'2026-01-{1 + n % 28:02} 09:00:00',NULL,{n / 4})"
        for n in range(ROWS)
    )
    server.execute(
        f"USE test; {TASKS_DDL}; {LEDGER_DDL};"
        "INSERT INTO tasks (id, title, done, priority, due_at, archived_at, estimate) "
        f"VALUES {values}; ANALYZE TABLE tasks;"
    )
    return Target("127.0.0.1", server.port, "root", "test")


def print_table(samples: list[Sample]) -> None:
    print(
        f"{'driver':<18}{'operation':<10}{'in flight':>10}{'req/s':>10}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'cpu µs/req':>12}{'stmts/req':>11}{'errors':>8}"
    )
    for s in samples:
        print(
            f"{s.driver:<18}{s.operation:<10}{s.in_flight:>10}{s.rps:>10.0f}"
            f"{s.p50_ms:>9.3f}{s.p99_ms:>9.3f}{s.cpu_us:>12.0f}{s.statements:>11.1f}{s.errors:>8}"
        )


def medians(samples: list[Sample], order: list[str]) -> list[Sample]:
    groups: dict[tuple[str, str, int], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.driver, sample.operation, sample.in_flight), []).append(sample)
    result = []
    for (driver, operation, in_flight), group in sorted(
        groups.items(), key=lambda item: (order.index(item[0][0]), item[0][1], item[0][2])
    ):
        result.append(
            Sample(
                driver,
                operation,
                in_flight,
                group[0].requests,
                statistics.median(s.rps for s in group),
                statistics.median(s.p50_ms for s in group),
                statistics.median(s.p99_ms for s in group),
                statistics.median(s.cpu_us for s in group),
                statistics.median(s.statements for s in group),
                sum(s.errors for s in group),
                next((s.first_error for s in group if s.first_error), ""),
            )
        )
    return result


async def check_sqlalchemy(target: Target) -> list[dict[str, Any]]:
    """For each SQLAlchemy MySQL dialect: does it work with a plain engine, with
    the asyncio extension, and which server does its dialect think it is on?"""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    base = f"{target.user}@{target.host}:{target.port}/{target.database}"
    findings = []
    for driver, dialect in SA_DIALECTS.items():
        url = f"mysql+{dialect}://{base}"
        finding: dict[str, Any] = {"url": f"mysql+{dialect}://", "installed": installed(driver)}
        if not finding["installed"]:
            findings.append(finding)
            continue
        for kind in ("create_engine", "create_async_engine"):
            try:
                if kind == "create_engine":
                    engine = sa.create_engine(url)
                    with engine.connect() as connection:
                        connection.execute(sa.text("SELECT 1"))
                    engine.dispose()
                else:
                    async_engine = create_async_engine(url)
                    async with async_engine.connect() as async_connection:
                        await async_connection.execute(sa.text("SELECT 1"))
                    dialect_object = async_engine.sync_engine.dialect
                    finding["is_mariadb"] = getattr(dialect_object, "is_mariadb", None)
                    finding["insert_returning"] = dialect_object.insert_returning
                    await async_engine.dispose()
                finding[kind] = "works"
            except Exception as error:
                finding[kind] = f"{type(error).__name__}: {str(error).splitlines()[0][:90]}"
        if "is_mariadb" not in finding:
            engine = sa.create_engine(url)
            with contextlib.suppress(Exception), engine.connect():
                finding["is_mariadb"] = getattr(engine.dialect, "is_mariadb", None)
                finding["insert_returning"] = engine.dialect.insert_returning
            engine.dispose()
        findings.append(finding)
    return findings


def time_one_process() -> dict[str, float]:
    """Seconds to a login: the process's first server (``mariadb-install-db``,
    then a start), a second one (a copy of that data dir, then a start), and
    a restart (``stop()`` then ``start()``)."""
    timings = {}
    started = time.perf_counter()
    with running_mariadb() as first:
        timings["first"] = time.perf_counter() - started
        started = time.perf_counter()
        with running_mariadb():
            timings["next"] = time.perf_counter() - started
        started = time.perf_counter()
        first.stop()
        first.start()
        timings["restart"] = time.perf_counter() - started
    return timings


def time_startups(processes: int) -> None:
    """:func:`time_one_process` in ``processes`` fresh interpreters (the data
    dir template lives as long as its process); prints the medians."""
    runs = []
    for _ in range(processes):
        child = subprocess.run(
            [sys.executable, __file__, "--startup-child"],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(child.stdout))
    summary = {
        kind: {
            "median_s": statistics.median(run[kind] for run in runs),
            "runs_s": [run[kind] for run in runs],
        }
        for kind in runs[0]
    }
    for kind, figures in summary.items():
        shown = " ".join(f"{value:.2f}" for value in figures["runs_s"])
        print(f"{kind:<8} median {figures['median_s']:.2f} s   ({shown})")
    print(json.dumps(summary))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drivers", default=",".join(ALL_DRIVERS))
    parser.add_argument(
        "--driver-pool",
        action="store_true",
        help="asyncio drivers: their own pool (create_pool) instead of a first-come-first-served one",
    )
    parser.add_argument("--sqlalchemy-check", action="store_true")
    parser.add_argument(
        "--startup",
        type=int,
        metavar="N",
        help="time N servers' start instead (first of a process, next one, restart)",
    )
    parser.add_argument("--startup-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.startup_child:
        print(json.dumps(time_one_process()))
        return
    if args.startup:
        time_startups(args.startup)
        return
    wanted = [name.strip() for name in args.drivers.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(ALL_DRIVERS))
    if unknown:
        parser.error(f"unknown drivers {unknown}; known: {', '.join(ALL_DRIVERS)}")
    drivers = [name for name in wanted if installed(name)]
    for name in sorted(set(wanted) - set(drivers)):
        print(f"skipped {name}: {_module_for(name)} is not installed", file=sys.stderr)

    started = time.perf_counter()
    with running_mariadb() as server:
        print(
            f"MariaDB up in {time.perf_counter() - started:.2f} s: "
            f"{server.execute('SELECT VERSION()').strip()}",
            file=sys.stderr,
        )
        target = prepare(server)
        if args.sqlalchemy_check:
            for finding in await check_sqlalchemy(target):
                print(json.dumps(finding))
            return
        samples: list[Sample] = []
        for round_number in range(args.rounds):
            shift = round_number % len(drivers)
            for name in drivers[shift:] + drivers[:shift]:
                print(f"round {round_number + 1}: {name}", file=sys.stderr)
                samples.extend(
                    await run_driver(
                        server, name, target, round_number, driver_pool=args.driver_pool
                    )
                )
    result = medians(samples, drivers)
    print(f"medians of {args.rounds} rounds, pool of {POOL_SIZE}, {ROWS} rows:")
    print_table(result)
    for sample in result:
        if sample.first_error:
            print(f"{sample.driver} {sample.operation} {sample.in_flight}: {sample.first_error}")
    print(json.dumps({"rounds": args.rounds, "samples": [asdict(s) for s in result]}))


if __name__ == "__main__":
    asyncio.run(main())
