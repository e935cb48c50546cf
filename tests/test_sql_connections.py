"""The hot reads' own connections: limits, hand-over, failures, on a real
PostgreSQL and with stand-in connections for the races."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from connector.adapters.sql import SQLSource
from connector.adapters.sql.connections import ReadConnections
from tests.helpers import execute
from tests.postgres import create_database, drop_database
from tests.test_sql_adapter import MODELS, Client, create, prepare


class _Stand:
    """Stands in for a psycopg connection: only what the pool looks at."""

    numbers = itertools.count(1)

    def __init__(self) -> None:
        self.number = next(self.numbers)
        self.closed = False
        self.broken = False
        self.pgconn = self

    def finish(self) -> None:
        self.closed = True


def _pool(size: int, **options: Any) -> tuple[ReadConnections, list[_Stand]]:
    opened: list[_Stand] = []

    async def connect() -> _Stand:
        await asyncio.sleep(0)
        opened.append(_Stand())
        return opened[-1]

    return ReadConnections(connect, size, **options), opened


async def test_never_more_than_size_and_the_longest_waiter_first() -> None:
    pool, opened = _pool(2)
    first, second = await pool.acquire(), await pool.acquire()
    order: list[int] = []

    async def wait(n: int) -> None:
        connection, when = await pool.acquire()
        order.append(n)
        await asyncio.sleep(0.01)
        pool.release(connection, when)

    waiting = [asyncio.create_task(wait(n)) for n in range(5)]
    await asyncio.sleep(0.01)
    assert order == [] and pool.open == 2
    pool.release(*first)
    pool.release(*second)
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2, 3, 4]
    assert len(opened) == 2 and pool.open == 2


async def test_a_wait_past_the_timeout_is_sqlalchemys_timeout() -> None:
    pool, _ = _pool(1, timeout=0.05)
    held = await pool.acquire()
    with pytest.raises(sa_exc.TimeoutError, match=r"within 0\.05 s"):
        await pool.acquire()
    pool.release(*held)
    assert (await pool.acquire())[0] is held[0]  # the timed-out waiter took nothing


async def test_a_connection_handed_over_as_the_wait_times_out_is_not_lost() -> None:
    """The hand-over and the timeout land in one busy loop turn: the waiter
    raises TimeoutError, and the connection must go back, not vanish."""
    pool, _ = _pool(1, timeout=0.2)
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    loop.call_later(0.1, pool.release, *held)  # before the deadline...
    loop.call_later(0.05, time.sleep, 0.3)  # ...but the loop is busy past it
    with pytest.raises(sa_exc.TimeoutError):
        await waiter
    again = await asyncio.wait_for(pool.acquire(), 1)
    assert again[0] is held[0] and pool.open == 1


async def test_a_busy_pool_still_replaces_old_connections() -> None:
    """Under steady load a connection goes from caller to waiter, never idle:
    its age is checked when it comes back too."""
    pool, opened = _pool(1, recycle=0.05)

    async def worker() -> None:
        for _ in range(40):
            connection, when = await pool.acquire()
            await asyncio.sleep(0.005)
            pool.release(connection, when)

    await asyncio.gather(worker(), worker())
    assert len(opened) > 1 and all(c.closed for c in opened[:-1])


async def test_a_cancelled_waiter_loses_no_connection() -> None:
    pool, opened = _pool(1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    pool.release(*held)  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    again = await asyncio.wait_for(pool.acquire(), 1)
    assert again[0] is held[0] and len(opened) == 1


async def test_a_broken_connection_frees_its_slot_and_the_idle_ones_go_too() -> None:
    pool, opened = _pool(3)
    held = [await pool.acquire() for _ in range(3)]
    pool.release(*held[1])
    pool.release(*held[2])  # two idle
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    assert waiter.done()  # an idle one went to it
    pool.release(*waiter.result())
    held[0][0].broken = True  # the server went away under the busy one
    pool.release(*held[0], failed=True)
    assert pool.open == 0 and all(c.closed for c in opened)
    fresh, _ = await pool.acquire()
    assert fresh not in opened[:3] and pool.open == 1


async def test_an_old_connection_is_replaced_not_reused() -> None:
    pool, _ = _pool(1, recycle=0.02)
    held = await pool.acquire()
    pool.release(*held)
    await asyncio.sleep(0.05)
    fresh, _ = await pool.acquire()
    assert fresh is not held[0] and held[0].closed and pool.open == 1


async def test_renew_replaces_idle_connections_now_and_busy_ones_when_given_back() -> None:
    """After a schema change every connection's prepared statements are
    stale: none opened before renew() is handed out again."""
    pool, opened = _pool(3)
    idle, busy = await pool.acquire(), await pool.acquire()
    pool.release(*idle)
    pool.renew()
    assert idle[0].closed and not busy[0].closed and pool.open == 1
    pool.release(*busy)
    assert busy[0].closed and pool.open == 0
    fresh, _ = await pool.acquire()
    assert fresh not in opened[:2] and not fresh.closed
    pool.release(fresh, _)
    assert (await pool.acquire())[0] is fresh  # opened after renew(): reused


async def test_a_failed_open_leaves_the_slot_to_the_next_caller() -> None:
    attempts = 0

    async def connect() -> _Stand:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("refused")
        return _Stand()

    pool = ReadConnections(connect, 1)
    with pytest.raises(OSError):
        await pool.acquire()
    assert pool.open == 0
    connection, _ = await pool.acquire()
    assert pool.open == 1 and not connection.closed


# ------------------------------------------------------------ on PostgreSQL


@contextlib.asynccontextmanager
async def _client(server: Any, **options: Any) -> AsyncIterator[tuple[Client, str]]:
    """A client of a SQLSource on a fresh database of ``server``, and its URL."""
    url = prepare(create_database(server))
    client = Client(SQLSource(url, MODELS, **options))
    try:
        yield client, url
    finally:
        await client.close()
        drop_database(server, url)


def _connections(url: str) -> int:
    rows = execute(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ablo-connector' "
        "AND datname = current_database() AND pid <> pg_backend_pid()",
    )
    return int(rows[0][0][0])


async def test_loads_use_at_most_pool_size_connections(postgres_server: Any) -> None:
    async with _client(postgres_server, pool_size=3) as (client, url):
        await client.commit("c_rows", *(create(f"t{i}") for i in range(20)))
        answers = await asyncio.gather(
            *(client({"type": "load", "model": "task", "id": f"t{i % 20}"}) for i in range(200))
        )
        assert [status for status, _ in answers] == [200] * 200
        assert [body["row"]["id"] for _, body in answers] == [f"t{i % 20}" for i in range(200)]
        # Three for the reads, and at most three more for commits and lists.
        assert _connections(url) <= 6


async def test_a_killed_read_connection_is_replaced_within_the_request(
    postgres_server: Any,
) -> None:
    """An administrator (or a failover) ends the connector's sessions: the
    next load retries once on a fresh connection and answers 200."""
    async with _client(postgres_server, pool_size=2) as (client, url):
        await client.commit("c_row", create("t1"))
        await asyncio.gather(
            *(client.ok({"type": "load", "model": "task", "id": "t1"}) for _ in range(4))
        )
        execute(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'ablo-connector' AND datname = current_database() "
            "AND pid <> pg_backend_pid()",
        )
        for _ in range(3):
            body = await client.ok({"type": "load", "model": "task", "id": "t1"})
            assert body["row"]["id"] == "t1"
        assert client.source.healthy


async def test_list_pages_of_one_shape_bind_their_own_values(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """List pages run as prepared statements compiled once per shape: each
    page binds its own values, cursors page on, IN lists still work, and the
    shapes kept are bounded."""
    monkeypatch.setattr("connector.adapters.sql.source._MAX_PAGE_SHAPES", 4)
    async with _client(postgres_server) as (client, _):
        await client.commit(
            "c_rows", *(create(f"t{i:02}", title=f"title {i % 3}") for i in range(12))
        )
        for n in (0, 1, 2, 0):  # one shape, three values, one repeated
            where = [{"field": "title", "op": "=", "value": f"title {n}"}]
            rows = (await client.list(where=where))["rows"]
            assert [row["id"] for row in rows] == [f"t{i:02}" for i in range(n, 12, 3)]
        seen: list[str] = []
        page = await client.list(limit=5)
        while True:
            seen += [row["id"] for row in page["rows"]]
            if not page.get("nextCursor"):
                break
            page = await client.list(limit=5, cursor=page["nextCursor"])
        assert seen == [f"t{i:02}" for i in range(12)]
        chosen = await client.list(where=[{"field": "id", "op": "IN", "value": ["t03", "t07"]}])
        assert [row["id"] for row in chosen["rows"]] == ["t03", "t07"]
        for k in range(1, 8):  # seven more shapes: k conditions each
            where = [{"field": "title", "op": "!=", "value": f"x{j}"} for j in range(k)]
            assert len((await client.list(where=where))["rows"]) == 12
        assert len(client.source._database._shapes) <= 4  # type: ignore[union-attr]


async def test_every_read_connection_busy_is_a_retryable_503(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("connector.adapters.sql.source.POOL_TIMEOUT_SECONDS", 0.2)
    async with _client(postgres_server, pool_size=1) as (client, _):
        await client.commit("c_row", create("t1"))
        await client.ok({"type": "load", "model": "task", "id": "t1"})
        reads = client.source._database._read_connections  # type: ignore[union-attr]
        held = await reads.acquire()  # a slow statement holds the only connection
        status, body = await client({"type": "load", "model": "task", "id": "t1"})
        assert (status, body["error"]) == (503, "source_database_unavailable")
        reads.release(*held)
        await client.ok({"type": "load", "model": "task", "id": "t1"})


async def test_a_like_page_served_before_sqlalchemy_connects(postgres_server: Any) -> None:
    """SQLAlchemy learns how the server escapes string literals on its first
    connection; a LIKE page compiled before that used the wrong escape and
    was refused, and stayed refused from the shape cache."""
    async with _client(postgres_server) as (client, url):
        execute(url, "INSERT INTO tasks (id, title) VALUES ('t1', 'alpha'), ('t2', 'beta')")
        await asyncio.to_thread(client.source.prepare)  # as `run` does: its own engine
        where = [{"field": "title", "op": "LIKE", "value": "al%"}]
        for _ in range(2):
            rows = (await client.list(where=where))["rows"]
            assert [row["id"] for row in rows] == ["t1"]


async def test_a_shape_sqlalchemy_must_run_is_not_compiled_again(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.adapters.sql import source as adapter

    compiled: list[object] = []
    compile_once = adapter._LoopDatabase._shape_for

    def counting(self: Any, statement: Any, cache_key: Any) -> Any:
        compiled.append(statement)
        return compile_once(self, statement, cache_key)

    monkeypatch.setattr(adapter._LoopDatabase, "_shape_for", counting)
    async with _client(postgres_server) as (client, _):
        await client.commit("c_rows", *(create(f"t{i}") for i in range(4)))
        for i in range(5):  # an IN list: SQLAlchemy expands it when it runs
            where = [{"field": "id", "op": "IN", "value": [f"t{i % 4}", "t9"]}]
            assert [row["id"] for row in (await client.list(where=where))["rows"]] == [f"t{i % 4}"]
    assert len(compiled) == 1


async def test_cached_list_shapes_keep_no_values_and_stay_within_their_bytes(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cached shape kept its first request's values (the compiled
    statement held its bound parameters): 256 shapes of long LIKE patterns
    held 200 MiB. Shapes now hold their SQL and key only, within a byte budget
    (small enough here that the 48 shapes, about 170 KB, do not all fit)."""
    budget = 64 * 1024
    monkeypatch.setattr(
        "connector.adapters.sql.source._MAX_PAGE_SHAPE_BYTES", budget, raising=False
    )
    async with _client(postgres_server) as (client, _):
        await client.commit("c_row", create("t1"))
        await client.list()  # connections open, dialect set up: not counted below
        shapes = client.source._database._shapes  # type: ignore[union-attr]
        gc.collect()
        tracemalloc.start()
        try:
            values = 0
            for k in range(1, 49):  # 48 shapes: 1 to 48 conditions of 10,000 characters
                patterns = [f"%{i}" + "v" * 9_990 for i in range(k)]
                values += sum(len(p) for p in patterns)
                where = [{"field": "title", "op": "NOT LIKE", "value": p} for p in patterns]
                assert [row["id"] for row in (await client.list(where=where))["rows"]] == ["t1"]
            gc.collect()
            with_shapes = tracemalloc.get_traced_memory()[0]
            kept = len(shapes)
            shapes.clear()
            gc.collect()
            retained = with_shapes - tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    assert values > 10_000_000
    # What the cache held, measured: within its budget (its own estimate of
    # itself may be off by a little), and nothing like the values it saw.
    assert retained < budget * 1.25, (retained, values)
    assert 0 < kept < 48  # the oldest shapes made room


async def test_mysql_and_mariadb_keep_twenty_connections_unless_told() -> None:
    """Nothing connects here: the pools are sized when the source is made."""
    sizes = {}
    for url, pool_size in [
        ("mysql://app@127.0.0.1:1/app", None),
        ("mariadb://app@127.0.0.1:1/app", None),
        ("mysql://app@127.0.0.1:1/app", 4),
        ("postgresql://app@127.0.0.1:1/app", None),
    ]:
        source = SQLSource(url, pool_size=pool_size)
        reads = source._database._read_connections  # type: ignore[union-attr]
        engine = source.engine
        assert isinstance(engine, AsyncEngine)
        sizes[url, pool_size] = (reads.size, engine.sync_engine.pool.size())  # type: ignore[attr-defined]
        await source.aclose()
    assert sizes == {
        ("mysql://app@127.0.0.1:1/app", None): (20, 20),
        ("mariadb://app@127.0.0.1:1/app", None): (20, 20),
        ("mysql://app@127.0.0.1:1/app", 4): (4, 4),
        ("postgresql://app@127.0.0.1:1/app", None): (10, 10),
    }
