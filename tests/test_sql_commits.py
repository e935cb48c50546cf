"""Commits on PostgreSQL through the adapter's own psycopg connections
(connector/adapters/sql/dialects/postgresql_commits.py): the statement cache's
bounds, a connection that dies mid-commit, concurrent identical commits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connector.adapters.sql import SQLSource
from connector.adapters.sql import source as source_module
from connector.adapters.sql.dialects.postgresql_commits import CommitTransaction
from connector.adapters.sql.execution import LoopDatabase
from tests.helpers import execute
from tests.postgres import create_database, drop_database
from tests.test_sql_adapter import MODELS, Client, create, prepare, update


@contextlib.asynccontextmanager
async def _client(server: Any, **options: Any) -> AsyncIterator[tuple[Client, str]]:
    url = prepare(create_database(server))
    client = Client(SQLSource(url, MODELS, **options))
    try:
        yield client, url
    finally:
        await client.close()
        drop_database(server, url)


def _scalar(url: str, sql: str) -> Any:
    return execute(url, sql)[0][0][0]


async def _ok(client: Client, key: str, *operations: dict[str, Any]) -> dict[str, Any]:
    status, body = await client.commit(key, *operations)
    assert status == 200, body
    return body


def _no_sqlalchemy_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a commit through SQLAlchemy's session fail the test."""

    async def refuse(self: Any, work: Any, *args: Any) -> Any:
        if getattr(work, "__name__", "") == "_commit_in":
            raise AssertionError("the commit went through SQLAlchemy")
        return await original(self, work, *args)

    original = LoopDatabase.write
    monkeypatch.setattr(LoopDatabase, "write", refuse)


async def test_concurrent_identical_commits_apply_once_on_the_direct_path(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_sqlalchemy_commits(monkeypatch)
    async with _client(postgres_server, pool_size=4) as (client, url):
        operations = [create("t1", title="A"), create("t2", title="B")]
        answers = await asyncio.gather(*(client.commit("c_race", *operations) for _ in range(8)))
        assert {status for status, _ in answers} == {200}
        assert all(body == answers[0][1] for _, body in answers)
        assert [row["title"] for row in answers[0][1]["rows"]] == ["A", "B"]
        assert _scalar(url, "SELECT COUNT(*) FROM tasks") == 2
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_outbox WHERE correlation_id = 'c_race'") == 2
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_idempotency") == 1
        # The replays only read the ledger: their transactions ended all the same.
        idle_in_transaction = (
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'ablo-connector' "
            "AND datname = current_database() AND state IN ('idle in transaction', 'idle in transaction (aborted)')"
        )
        assert _scalar(url, idle_in_transaction) == 0
        # A replay with another intent is still refused, and writes nothing.
        status, body = await client.commit("c_race", create("t3", title="C"))
        assert (status, body["error"]) == (409, "idempotency_conflict")
        assert _scalar(url, "SELECT COUNT(*) FROM tasks") == 2


async def test_a_refused_operation_rolls_back_and_the_connection_serves_on(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_sqlalchemy_commits(monkeypatch)
    async with _client(postgres_server, pool_size=1) as (client, url):
        await _ok(client, "c_1", create("t1", title="A"))
        status, body = await client.commit("c_2", create("t2", title="B"), create("t1"))
        assert (status, body["error"]) == (409, "source_constraint_violation")
        status, body = await client.commit("c_3", update("nope", title="B"))
        assert (status, body["error"]) == (404, "source_row_not_found")
        assert _scalar(url, "SELECT COUNT(*) FROM tasks") == 1
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_idempotency") == 1
        # The one connection was rolled back, not left in a failed transaction.
        await _ok(client, "c_4", update("t1", title="C"))
        assert _scalar(url, "SELECT title FROM tasks WHERE id = 't1'") == "C"


async def test_a_connection_killed_mid_commit_is_retried_once_and_applies_once(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_sqlalchemy_commits(monkeypatch)
    killed: list[int] = []
    original = CommitTransaction.row

    async def kill_first(self: CommitTransaction, shape: Any, values: Any) -> Any:
        if not killed:
            pid = self._connection.info.backend_pid
            killed.append(pid)
            execute(url, f"SELECT pg_terminate_backend({pid})")
        return await original(self, shape, values)

    async with _client(postgres_server, pool_size=2) as (client, url):
        await _ok(client, "c_1", create("t1", title="A"))
        monkeypatch.setattr(CommitTransaction, "row", kill_first)
        body = await _ok(client, "c_2", update("t1", title="B"))
        assert body["rows"][0]["title"] == "B"
        assert len(killed) == 1
        assert client.source.healthy
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_outbox WHERE correlation_id = 'c_2'") == 1
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_idempotency WHERE client_tx_id = 'c_2'") == 1
        # The same commit again is a replay of the one answer.
        assert await _ok(client, "c_2", update("t1", title="B")) == body


async def test_the_statement_cache_stays_within_its_bound(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_sqlalchemy_commits(monkeypatch)
    monkeypatch.setattr(source_module, "_MAX_PAGE_SHAPES", 3)
    fields = ["title", "done", "priority", "estimate"]
    async with _client(postgres_server) as (client, url):
        await _ok(client, "c_0", create("t1", title="A"))
        shapes = client.source._database._commits.shapes  # type: ignore[union-attr]
        for n, field in enumerate(fields):
            value: Any = {"title": "x", "done": True, "priority": n, "estimate": 1.5}[field]
            await _ok(client, f"c_{n + 1}", update("t1", **{field: value}))
            assert len(shapes) <= 3
        assert len(shapes) == 3
        # An evicted shape is compiled again and still writes what it should.
        await _ok(client, "c_again", update("t1", title="again"))
        assert _scalar(url, "SELECT title FROM tasks WHERE id = 't1'") == "again"
        assert _scalar(url, "SELECT priority FROM tasks WHERE id = 't1'") == 2
