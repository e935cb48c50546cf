"""List shapes whose plan reads or sorts the whole table: logged once, with
the index that would serve them, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.adapters.sql import SQLSource
from connector.dev.engine import DevEngine
from connector.wire.bodies import ListQuery
from tests.helpers import execute, fresh_database, process
from tests.test_operations import KEY, _metric, get, probed
from tests.test_sql_adapter import MODELS, Client, database_url, prepare

__all__ = ["database_url"]  # the fixture, shared with test_sql_adapter

ROWS = 3000
# Rows of a real table large enough that a planner reads every row to order
# by a column no index serves, and uses the primary key to order by the id.
FILL = {
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
    "INSERT INTO tasks (id, title, priority, due_at) "
    "SELECT printf('t%05d', i), 'task', i % 7, datetime('2026-01-01', '+' || i || ' minutes') FROM n",
    "postgresql": "INSERT INTO tasks (id, title, priority, due_at) "
    "SELECT 't' || lpad(i::text, 5, '0'), 'task', mod(i, 7), "
    "timestamptz '2026-01-01' + i * interval '1 minute' FROM generate_series(1, {rows}) i",
    "mysql": "INSERT INTO tasks (id, title, priority, due_at) "
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
    "SELECT CONCAT('t', LPAD(i, 5, '0')), 'task', mod(i, 7), "
    "TIMESTAMP '2026-01-01 00:00:00' + INTERVAL i MINUTE FROM n",
}
ANALYZE = {"sqlite": "ANALYZE", "postgresql": "ANALYZE tasks", "mysql": "ANALYZE TABLE tasks"}


@pytest.fixture
async def filled(database_url: str) -> AsyncIterator[str]:
    yield _filled(database_url)


def _filled(url: str) -> str:
    """``url``'s database with the tasks table, its ``ROWS`` rows, analyzed."""
    prepare(url)
    backend = sa.make_url(url).get_backend_name()
    fill = FILL[backend].format(rows=ROWS)
    if backend == "mysql":  # MariaDB stops a recursive CTE at 1,000 rows by default
        execute(url, "SET SESSION max_recursive_iterations = 100000", fill)
    else:
        execute(url, fill)
    execute(url, ANALYZE[backend])
    return url


async def _until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)


async def test_a_list_that_sorts_the_whole_table_is_logged_once_with_its_index(
    filled: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="connector.sql")
    client = Client(SQLSource(filled, MODELS))
    try:
        # Ordered by the id (the primary key): the database reads 51 rows.
        page = await client.list(limit=50)
        assert len(page["rows"]) == 50
        indexed = ListQuery.model_validate({"limit": 50})
        assert await client.source.shape_plan("task", indexed) is None
        # Ordered by due_at, which no index serves: every row is sorted.
        for _ in range(3):  # one shape, served three times: read and logged once
            page = await client.list(limit=50, orderBy="dueAt", where=[["priority", 3]])
            assert len(page["rows"]) == 50
        await _until(lambda: client.source.full_table_shapes)
        await asyncio.sleep(0)  # nothing else queued: the plain list was not reported
        (shape,) = client.source.full_table_shapes
        assert shape.model == "task"
        assert "sort every row" in shape.reasons
        assert shape.index == "tasks (priority, due_at, id)"
        lines = [r.getMessage() for r in caplog.records if "index on" in r.getMessage()]
        assert lines == [
            "list of model 'task' (where priority =; orderBy dueAt asc) makes the database "
            f"{' and '.join(shape.reasons)} of table tasks: an index on "
            "tasks (priority, due_at, id) would serve it"
        ]
    finally:
        await client.close()


async def test_a_shape_an_index_serves_is_not_reported(filled: str) -> None:
    """The index the log line advises serves the shape. On MySQL and MariaDB
    a nullable order column sorts its NULLs last on ``due_at IS NULL``, which
    no index serves: there the filter's index is what is checked."""
    backend = sa.make_url(filled).get_backend_name()
    source = SQLSource(filled, MODELS)
    try:
        if backend == "mysql":
            execute(filled, "CREATE INDEX tasks_priority ON tasks (priority, id)")
            query = {"limit": 50, "where": [["priority", 3]]}
        else:
            execute(filled, "CREATE INDEX tasks_due ON tasks (due_at, id)")
            query = {"limit": 50, "orderBy": "dueAt"}
        execute(filled, ANALYZE[backend])
        assert await source.shape_plan("task", ListQuery.model_validate(query)) is None
    finally:
        await source.aclose()


async def test_plans_are_read_through_a_mariadb_url_too(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # SQLAlchemy names the dialect of a mariadb:// URL "mariadb", of a
    # mysql:// one "mysql" (what the other tests use): both are MySQL's plans.
    with fresh_database(request, "mariadb", tmp_path / "unused.db") as url:
        served = _filled(url).replace("mysql://", "mariadb://", 1)
        source = SQLSource(served, MODELS)
        try:
            query = {"limit": 50, "orderBy": "dueAt", "where": [["priority", 3]]}
            shape = await source.shape_plan("task", ListQuery.model_validate(query))
            assert shape is not None and "sort every row" in shape.reasons
        finally:
            await source.aclose()


async def test_the_metric_counts_the_shapes_that_read_the_whole_table(filled: str) -> None:
    source = SQLSource(filled, MODELS)
    client = Client(source)
    async with DevEngine(KEY) as engine, probed(source, engine.base_url, 5.0) as (_, base):
        name = "ablo_connector_full_table_list_shapes"
        assert _metric((await get(base + "/metrics"))[1], name) == 0
        await client.list(limit=50)  # ordered by the primary key: not counted
        await client.list(limit=50, orderBy="dueAt", where=[["priority", 3]])
        await client.list(limit=50, orderBy="dueAt", where=[["priority", 3]])
        await _until(lambda: source.full_table_shapes)
        assert _metric((await get(base + "/metrics"))[1], name) == 1


async def test_check_shows_the_shapes_that_read_the_whole_table(
    filled: str, tmp_path: Path
) -> None:
    """``check --database-url`` reads each model's default page and a page
    ordered by each field, without serving: every order but the id's sorts."""
    models = tmp_path / "models.toml"
    models.write_text('[models.task]\ntable = "tasks"\n')
    async with process(
        ["check", "--database-url", filled, "--models", str(models)], {"ABLO_API_KEY": ""}
    ) as check:
        assert await check.wait(60) == 0, check.output()
        lines = check.output().splitlines()
    assert (
        "ok    plans: 7 list shapes read (each model's default page, and one ordered by each "
        "field), 6 scan or sort the whole table"
    ) in lines
    reported = [line for line in lines if line.endswith("would serve it")]
    columns = ["title", "done", "priority", "due_at", "archived_at", "estimate"]
    assert [line.split(": an index on ")[1] for line in reported] == [
        f"tasks ({column}, id) would serve it" for column in columns
    ]
    assert all(
        line.startswith("      list of model 'task' (where no filter; orderBy ")
        for line in reported
    )
