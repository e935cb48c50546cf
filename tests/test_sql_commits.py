"""Commits through the adapter's own driver connections on PostgreSQL and
MariaDB (connector/adapters/sql/commits.py and the dialects' own): the
statement cache's bounds, a connection that dies mid-commit, concurrent
identical commits, and on MySQL and MariaDB the commit-order lock, which
belongs to the session and must never outlive a commit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.sql import SQLSource
from connector.adapters.sql import source as source_module
from connector.adapters.sql.dialects.mysql_commits import MySQLTransaction
from connector.adapters.sql.dialects.postgresql_commits import CommitTransaction
from connector.adapters.sql.execution import LoopDatabase
from tests.helpers import execute, fresh_database
from tests.test_sql_adapter import MODELS, Client, create, prepare, update

DIALECTS = ["postgresql", "mariadb"]
# Each database's transaction class, how a session is named, how it is
# killed, and how many transactions are open.
TRANSACTION = {"postgresql": CommitTransaction, "mariadb": MySQLTransaction}
KILL = {"postgresql": "SELECT pg_terminate_backend({})", "mariadb": "KILL CONNECTION {}"}
OPEN_TRANSACTIONS = {
    "postgresql": "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'ablo-connector' "
    "AND datname = current_database() "
    "AND state IN ('idle in transaction', 'idle in transaction (aborted)')",
    "mariadb": "SELECT COUNT(*) FROM information_schema.INNODB_TRX",
}
LOCK_IS_FREE = "SELECT IS_FREE_LOCK(LEFT(CONCAT('ablo_outbox.', DATABASE()), 64))"


def _session(dialect: str, connection: Any) -> int:
    if dialect == "postgresql":
        return int(connection.info.backend_pid)
    return int(connection.thread_id())


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def opened(request: pytest.FixtureRequest, dialect: str, tmp_path: Path) -> Any:
    """Opens a client of a new database of ``dialect``: ``async with opened(**options)``."""
    stack = contextlib.ExitStack()

    @contextlib.asynccontextmanager
    async def _client(**options: Any) -> AsyncIterator[tuple[Client, str]]:
        url = prepare(stack.enter_context(fresh_database(request, dialect, tmp_path / "a.db")))
        client = Client(SQLSource(url, MODELS, **options))
        try:
            yield client, url
        finally:
            await client.close()

    with stack:
        yield _client


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


async def _refuse_the_event_of_c_2(client: Client, url: str) -> None:
    """Commit ``c_1`` (a CREATE of t1), then take the outbox id that commit
    ``c_2``'s first event will have: that event is refused, under the lock."""
    await _ok(client, "c_1", create("t1", title="A"))
    taken = _scalar(url, "SELECT id FROM ablo_outbox WHERE correlation_id = 'c_1'")
    execute(
        url,
        "INSERT INTO ablo_outbox (id, model, entity_id, type) "
        f"VALUES ('{taken.replace('c_1', 'c_2')}', 'task', 't1', 'UPDATE')",
    )


async def test_concurrent_identical_commits_apply_once_on_the_direct_path(
    opened: Any, dialect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_sqlalchemy_commits(monkeypatch)
    async with opened(pool_size=4) as (client, url):
        operations = [create("t1", title="A"), create("t2", title="B")]
        answers = await asyncio.gather(*(client.commit("c_race", *operations) for _ in range(8)))
        assert {status for status, _ in answers} == {200}
        assert all(body == answers[0][1] for _, body in answers)
        assert [row["title"] for row in answers[0][1]["rows"]] == ["A", "B"]
        assert _scalar(url, "SELECT COUNT(*) FROM tasks") == 2
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_outbox WHERE correlation_id = 'c_race'") == 2
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_idempotency") == 1
        # The replays only read the ledger: their transactions ended all the same.
        assert _scalar(url, OPEN_TRANSACTIONS[dialect]) == 0
        # A replay with another intent is still refused, and writes nothing.
        status, body = await client.commit("c_race", create("t3", title="C"))
        assert (status, body["error"]) == (409, "idempotency_conflict")
        assert _scalar(url, "SELECT COUNT(*) FROM tasks") == 2


async def test_a_refused_operation_rolls_back_and_the_connection_serves_on(
    opened: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_sqlalchemy_commits(monkeypatch)
    async with opened(pool_size=1) as (client, url):
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
    opened: Any, dialect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_sqlalchemy_commits(monkeypatch)
    killed: list[int] = []
    transaction = TRANSACTION[dialect]
    original = transaction.row

    async def kill_first(self: Any, shape: Any, values: Any) -> Any:
        if not killed:
            session = _session(dialect, self.connection)
            killed.append(session)
            execute(url, KILL[dialect].format(session))
        return await original(self, shape, values)

    async with opened(pool_size=2) as (client, url):
        await _ok(client, "c_1", create("t1", title="A"))
        monkeypatch.setattr(transaction, "row", kill_first)
        body = await _ok(client, "c_2", update("t1", title="B"))
        assert body["rows"][0]["title"] == "B"
        assert len(killed) == 1
        assert client.source.healthy
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_outbox WHERE correlation_id = 'c_2'") == 1
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_idempotency WHERE client_tx_id = 'c_2'") == 1
        # The same commit again is a replay of the one answer.
        assert await _ok(client, "c_2", update("t1", title="B")) == body


async def test_the_statement_cache_stays_within_its_bound(
    opened: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_sqlalchemy_commits(monkeypatch)
    monkeypatch.setattr(source_module, "_MAX_PAGE_SHAPES", 3)
    fields = ["title", "done", "priority", "estimate"]
    async with opened() as (client, url):
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


@pytest.mark.parametrize("dialect", ["mariadb"])
async def test_a_commit_refused_under_the_lock_writes_nothing_and_frees_it(
    opened: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The events, COMMIT and the lock's release go in one round trip: an
    # event the outbox refuses must stop the COMMIT after it, and the
    # rollback must still release the lock.
    _no_sqlalchemy_commits(monkeypatch)
    async with opened(pool_size=1) as (client, url):
        await _refuse_the_event_of_c_2(client, url)
        status, body = await client.commit("c_2", update("t1", title="B"))
        assert (status, body["error"]) == (409, "source_constraint_violation")
        assert _scalar(url, "SELECT title FROM tasks WHERE id = 't1'") == "A"
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_idempotency WHERE client_tx_id = 'c_2'") == 0
        assert _scalar(url, LOCK_IS_FREE) == 1
        assert _scalar(url, OPEN_TRANSACTIONS["mariadb"]) == 0
        # The one connection serves on, and takes the lock again.
        await _ok(client, "c_3", update("t1", title="C"))
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_outbox WHERE correlation_id = 'c_3'") == 1
        assert _scalar(url, LOCK_IS_FREE) == 1


@pytest.mark.parametrize("dialect", ["mariadb"])
async def test_a_session_killed_holding_the_lock_frees_it_and_the_commit_applies_once(
    opened: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_sqlalchemy_commits(monkeypatch)
    killed: list[int] = []
    original = MySQLTransaction.execute

    async def kill_after_the_lock(self: MySQLTransaction, shape: Any, values: Any) -> Any:
        done = await original(self, shape, values)
        if "GET_LOCK" in shape.sql and not killed:
            killed.append(_session("mariadb", self.connection))
            execute(url, KILL["mariadb"].format(killed[0]))
        return done

    async with opened(pool_size=2) as (client, url):
        await _ok(client, "c_1", create("t1", title="A"))
        monkeypatch.setattr(MySQLTransaction, "execute", kill_after_the_lock)
        # The lock waits 30 s for a holder: the retry must not wait for a dead one.
        body = await asyncio.wait_for(_ok(client, "c_2", update("t1", title="B")), 20)
        assert body["rows"][0]["title"] == "B"
        assert len(killed) == 1
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_outbox WHERE correlation_id = 'c_2'") == 1
        assert _scalar(url, LOCK_IS_FREE) == 1
        assert await _ok(client, "c_2", update("t1", title="B")) == body


async def test_a_commit_cancelled_in_its_rollback_gives_its_connection_back(
    opened: Any, dialect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request past its deadline is cancelled wherever it is, the rollback
    # after a refused event included: the connection (mid-transaction,
    # maybe holding the commit-order lock) must be closed, never lost to
    # the pool, or every later commit waits for a slot no one gives back.
    _no_sqlalchemy_commits(monkeypatch)
    async with opened(pool_size=1) as (client, url):
        await _refuse_the_event_of_c_2(client, url)
        commits = client.source._database._commits
        rolling_back = asyncio.Event()

        async def stuck(self: Any, transaction: Any) -> bool:
            rolling_back.set()
            await asyncio.Event().wait()  # a ROLLBACK that never comes back
            raise AssertionError("unreachable")

        monkeypatch.setattr(type(commits), "_rolled_back", stuck)
        refused = asyncio.ensure_future(client.commit("c_2", update("t1", title="B")))
        await asyncio.wait_for(rolling_back.wait(), 20)
        refused.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refused
        monkeypatch.undo()
        _no_sqlalchemy_commits(monkeypatch)
        assert commits.connections.open == 0  # closed, not kept busy
        body = await asyncio.wait_for(_ok(client, "c_3", update("t1", title="C")), 20)
        assert body["rows"][0]["title"] == "C"
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_outbox WHERE correlation_id = 'c_2'") == 0
        assert _scalar(url, "SELECT title FROM tasks WHERE id = 't1'") == "C"


@pytest.mark.parametrize("dialect", ["mariadb"])
@pytest.mark.parametrize("direct", [True, False], ids=["own-connections", "sqlalchemy"])
async def test_a_mysql8_delete_leaves_a_row_committed_after_its_read_found_none(
    opened: Any, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    # MySQL 8 has no DELETE … RETURNING: the row is read, locked, then
    # deleted. Under READ COMMITTED a read that finds no row locks nothing,
    # so a row another session commits just then must survive the DELETE
    # (which answers "already gone"), or it would vanish with no event.
    async with opened(pool_size=2) as (client, url):
        assert await client.load("task", "t9") is None  # the dialect has learnt the server
        database = client.source._database
        database._dialect.delete_returning = False  # MySQL 8's statements, on MariaDB
        if direct:
            _no_sqlalchemy_commits(monkeypatch)
            original = MySQLTransaction.execute

            async def then_committed(self: Any, shape: Any, values: Any) -> Any:
                done = await original(self, shape, values)
                if "FOR UPDATE" in shape.sql:
                    execute(url, "INSERT INTO tasks (id, title) VALUES ('t9', 'late')")
                return done

            monkeypatch.setattr(MySQLTransaction, "execute", then_committed)
        else:
            database._commits = None
            read = source_module.SQLSource._select

            def then_committed_too(
                self: Any, connection: Any, *args: Any, lock: bool = False
            ) -> Any:
                found = read(self, connection, *args, lock=lock)
                if lock:
                    execute(url, "INSERT INTO tasks (id, title) VALUES ('t9', 'late')")
                return found

            monkeypatch.setattr(source_module.SQLSource, "_select", then_committed_too)
        body = await _ok(client, "c_del", {"type": "DELETE", "model": "task", "id": "t9"})
        assert body["rows"] == [{"id": "t9"}]  # already gone, as it was when read
        assert _scalar(url, "SELECT COUNT(*) FROM tasks WHERE id = 't9'") == 1, "deleted"
        assert _scalar(url, "SELECT COUNT(*) FROM ablo_outbox WHERE correlation_id = 'c_del'") == 0
