"""The SQL adapter against real databases: SQLite files, a private PostgreSQL
and a private MariaDB.

Every request goes through the dispatcher as a signed request body, so what
is asserted is what the engine would receive. The conformance tests run on
all three databases; WAL echo and restart tests need PostgreSQL (MySQL's own
are in test_sql_mariadb.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector import ConfigError, RequestContext, SourceError
from connector.adapters.sql import ModelMap, SQLSource, create_database_engine, migrate
from connector.wire.bodies import Condition, ListPage, ListQuery
from connector.wire.strict_json import loads as strict_json_loads
from tests.helpers import (
    TASKS_DDL,
    SourceClient,
    dispatch_frame,
    execute,
    fresh_database,
    signed_frame,
)
from tests.postgres import create_database, drop_database, require_password

DIALECTS = ["sqlite", "postgresql", "mariadb"]

MODELS = {"models": {"task": {"table": "tasks"}}}


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request, request.param, tmp_path / "app.db") as url:
        yield url


def scalar(url: str, statement: str) -> Any:
    return execute(url, statement)[0][0][0]


def prepare(url: str) -> str:
    """The tasks table plus the adapter's ledger and outbox."""
    execute(url, TASKS_DDL[sa.make_url(url).get_backend_name()])
    engine = create_database_engine(url)
    migrate(engine)
    engine.dispose()
    return url


@pytest.fixture
def prepared(database_url: str) -> str:
    return prepare(database_url)


class Client(SourceClient):
    """The SQL adapter's tests' client: lists and events of ``task``."""

    async def list(self, **query: Any) -> dict[str, Any]:
        return await self.ok({"type": "list", "model": "task", "query": query})

    async def events(self, cursor: str | None = None, limit: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "events"}
        if cursor is not None:
            body["cursor"] = cursor
        if limit is not None:
            body["limit"] = limit
        return await self.ok(body)


@pytest.fixture
async def client(prepared: str) -> AsyncIterator[Client]:
    c = Client(SQLSource(prepared, MODELS))
    yield c
    await c.close()


def create(id: str, **input: Any) -> dict[str, Any]:
    return {"type": "CREATE", "model": "task", "id": id, "input": {"title": id.upper(), **input}}


def update(id: str, **input: Any) -> dict[str, Any]:
    return {"type": "UPDATE", "model": "task", "id": id, "input": input}


def dialect_of(url: str) -> str:
    return sa.make_url(url).get_backend_name()


def key_type(url: str) -> str:
    """A text key column's type: MySQL keys a TEXT column only by a prefix."""
    return "VARCHAR(64)" if dialect_of(url) == "mysql" else "TEXT"


def quoted(url: str, name: str) -> str:
    """An identifier quoted as the database quotes it (MySQL: backticks)."""
    return f"`{name}`" if dialect_of(url) == "mysql" else f'"{name}"'


# ------------------------------------------------------------ conformance


async def test_create_returns_the_canonical_row(client: Client) -> None:
    status, body = await client.commit(
        "c_create", create("t1", title="A", dueAt="2026-01-02T03:04:05Z")
    )
    assert status == 200
    (row,) = body["rows"]
    # Database defaults and every served field come back, under field names.
    assert row["id"] == "t1" and row["title"] == "A"
    assert row["done"] is False and row["priority"] is None and row["archivedAt"] is None
    assert row["dueAt"].startswith("2026-01-02T03:04:05")


async def test_load_returns_a_committed_row_and_null_for_an_unknown_id(client: Client) -> None:
    await client.commit("c_load", create("t1", title="A"))
    found = await client.ok({"type": "load", "model": "task", "id": "t1"})
    assert found["row"]["title"] == "A"
    assert await client.ok({"type": "load", "model": "task", "id": "nope"}) == {"row": None}


async def test_list_returns_committed_rows(client: Client) -> None:
    await client.commit("c_list", create("t1"), create("t2"))
    page = await client.list()
    assert sorted(row["id"] for row in page["rows"]) == ["t1", "t2"]
    assert "nextCursor" not in page


async def test_replay_returns_the_original_rows_without_writing(
    client: Client, prepared: str
) -> None:
    operations = create("t1", title="A", priority=1)
    first = await client.commit("c_replay", operations)
    # Someone else changes the row; a replay must not write it back.
    execute(prepared, "UPDATE tasks SET title = 'changed elsewhere' WHERE id = 't1'")
    second = await client.commit("c_replay", operations)
    assert second == first
    assert scalar(prepared, "SELECT title FROM tasks WHERE id = 't1'") == "changed elsewhere"
    assert scalar(prepared, "SELECT COUNT(*) FROM tasks") == 1
    assert scalar(prepared, "SELECT COUNT(*) FROM ablo_outbox") == 1
    assert scalar(prepared, "SELECT COUNT(*) FROM ablo_idempotency") == 1


async def test_same_correlation_with_a_different_intent_is_a_conflict(
    client: Client, prepared: str
) -> None:
    status, _ = await client.commit("c_conflict", create("t1", title="A"), intentHash="a" * 64)
    assert status == 200
    status, body = await client.commit("c_conflict", update("t1", title="B"), intentHash="b" * 64)
    assert (status, body["error"]) == (409, "idempotency_conflict")
    # Without an intentHash the hash of the operations decides, and differs too.
    status, body = await client.commit("c_conflict", update("t1", title="B"))
    assert (status, body["error"]) == (409, "idempotency_conflict")
    assert scalar(prepared, "SELECT title FROM tasks WHERE id = 't1'") == "A"


async def test_concurrent_identical_commits_apply_once(client: Client, prepared: str) -> None:
    operations = [create("t1", title="A"), create("t2", title="B")]
    answers = await asyncio.gather(*(client.commit("c_race", *operations) for _ in range(8)))
    assert {status for status, _ in answers} == {200}
    assert all(body == answers[0][1] for _, body in answers)
    assert scalar(prepared, "SELECT COUNT(*) FROM tasks") == 2
    assert scalar(prepared, "SELECT COUNT(*) FROM ablo_outbox WHERE correlation_id = 'c_race'") == 2


async def test_a_later_commit_under_a_new_correlation_applies(client: Client) -> None:
    await client.commit("c_first", create("t1", title="A"))
    status, body = await client.commit("c_second", update("t1", title="B"))
    assert status == 200 and body["rows"][0]["title"] == "B"
    found = await client.ok({"type": "load", "model": "task", "id": "t1"})
    assert found["row"]["title"] == "B"


async def test_outbox_events_carry_correlation_and_operation_identity(client: Client) -> None:
    operation = {**create("t1", title="A"), "transactionId": "op_1"}
    await client.commit("c_event", operation)
    await client.commit("c_event", operation)  # a replay appends nothing
    events = (await client.events())["events"]
    assert len(events) == 1
    (event,) = events
    assert event["id"] == "c_event:0"
    assert (event["model"], event["entityId"], event["type"]) == ("task", "t1", "CREATE")
    assert (event["correlationId"], event["transactionId"]) == ("c_event", "op_1")
    assert "clientTxId" not in event
    assert event["data"]["title"] == "A"
    assert isinstance(event["occurredAt"], int)


async def test_events_cursor_advances_and_drains(client: Client) -> None:
    for n in range(5):
        await client.commit(f"c_page_{n}", create(f"t{n}"))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await client.events(cursor, limit=2)
        if not page["events"]:
            assert page.get("nextCursor") == cursor  # drained: the position is kept
            break
        pages += 1
        seen += [event["entityId"] for event in page["events"]]
        assert page["nextCursor"] == page["events"][-1]["cursor"]
        cursor = page["nextCursor"]
    assert pages == 3
    assert seen == [f"t{n}" for n in range(5)]
    # A new event appears after the cursor, once.
    await client.commit("c_page_late", create("late"))
    assert [e["entityId"] for e in (await client.events(cursor))["events"]] == ["late"]


REWIND_OUTBOX = {
    "postgresql": ("TRUNCATE ablo_outbox RESTART IDENTITY",),
    "sqlite": ("DELETE FROM ablo_outbox", "DELETE FROM sqlite_sequence WHERE name = 'ablo_outbox'"),
    "mysql": ("TRUNCATE TABLE ablo_outbox",),
}


async def test_an_events_cursor_never_issued_is_refused(client: Client, prepared: str) -> None:
    """A cursor past the outbox's last one was answered 200 and an empty page:
    the engine would wait there for events that come under lower cursors."""
    for cursor in ("999999", "1"):
        status, body = await client({"type": "events", "cursor": cursor})
        assert (status, body["error"]) == (400, "source_cursor_invalid"), (cursor, body)
    status, body = await client({"type": "events", "cursor": "999999", "limit": 0})
    assert (status, body["error"]) == (400, "source_cursor_invalid")
    await client.commit("c_one", create("t1"), create("t2"))
    last = (await client.events())["nextCursor"]
    assert (await client.events(last)) == {"events": [], "nextCursor": last}
    status, body = await client({"type": "events", "cursor": str(int(last) + 1)})
    assert (status, body["error"]) == (400, "source_cursor_invalid")
    # Pruning every event does not invalidate a cursor that was issued...
    execute(prepared, "DELETE FROM ablo_outbox")
    assert (await client.events(last)) == {"events": [], "nextCursor": last}
    await client.commit("c_two", create("t3"))
    assert [e["entityId"] for e in (await client.events(last))["events"]] == ["t3"]
    # ...but an outbox rewound to its start does: its next events reuse the cursors.
    execute(prepared, *REWIND_OUTBOX[dialect_of(prepared)])
    status, body = await client({"type": "events", "cursor": last})
    assert (status, body["error"]) == (400, "source_cursor_invalid")
    assert "recreated" in body["message"]


async def test_a_failing_operation_rolls_back_the_whole_commit(
    client: Client, prepared: str
) -> None:
    status, body = await client.commit("c_atomic", create("t1"), update("missing", title="x"))
    assert (status, body["error"]) == (404, "source_row_not_found")
    assert scalar(prepared, "SELECT COUNT(*) FROM tasks") == 0
    assert scalar(prepared, "SELECT COUNT(*) FROM ablo_outbox") == 0
    assert scalar(prepared, "SELECT COUNT(*) FROM ablo_idempotency") == 0
    # Nothing was recorded, so the same correlation may run once it can succeed.
    status, _ = await client.commit("c_atomic", create("t1"))
    assert status == 200


async def test_archive_unarchive_and_delete(client: Client, prepared: str) -> None:
    await client.commit("c_a1", create("t1"))
    _, archived = await client.commit("c_a2", {"type": "ARCHIVE", "model": "task", "id": "t1"})
    assert archived["rows"][0]["archivedAt"] is not None
    _, restored = await client.commit("c_a3", {"type": "UNARCHIVE", "model": "task", "id": "t1"})
    assert restored["rows"][0]["archivedAt"] is None
    _, deleted = await client.commit("c_a4", {"type": "DELETE", "model": "task", "id": "t1"})
    assert deleted["rows"][0]["id"] == "t1"
    assert scalar(prepared, "SELECT COUNT(*) FROM tasks") == 0
    # A DELETE's event carries no data.
    assert "data" not in (await client.events())["events"][-1]
    # Deleting what is gone is done, and writes no second event (nothing
    # happened), also beside an operation that did change a row.
    status, gone = await client.commit("c_a5", {"type": "DELETE", "model": "task", "id": "t1"})
    assert (status, gone["rows"]) == (200, [{"id": "t1"}])
    delete_again = {"type": "DELETE", "model": "task", "id": "t1"}
    status, mixed = await client.commit("c_a6", delete_again, create("t2"))
    assert (status, mixed["rows"][0]) == (200, {"id": "t1"})
    events = (await client.events())["events"]
    assert [e["type"] for e in events] == ["CREATE", "ARCHIVE", "UNARCHIVE", "DELETE", "CREATE"]
    assert events[-1]["id"] == "c_a6:1"  # the operation's own index
    # A replay of the no-op delete answers the same and still writes nothing.
    assert await client.commit("c_a5", delete_again) == (200, gone)
    assert scalar(prepared, "SELECT COUNT(*) FROM ablo_outbox") == 5


async def test_write_errors_are_specific(client: Client) -> None:
    await client.commit("c_e1", create("t1"))
    cases = [
        (create("t1"), 409, "source_constraint_violation"),  # duplicate primary key
        ({"type": "CREATE", "model": "task", "id": "t2", "input": {}}, 409, "source_constraint_violation"),  # NOT NULL title
        (update("t1", nope=1), 400, "source_unknown_field"),
        (update("t1", priority="high"), 400, "source_value_invalid"),
        (update("t1", done="yes"), 400, "source_value_invalid"),
        (update("t1", dueAt="tomorrow"), 400, "source_value_invalid"),
        ({"type": "UPDATE", "model": "ghost", "id": "t1", "input": {}}, 400, "source_unknown_model"),
        ({"type": "UPDATE", "model": "task", "input": {"title": "x"}}, 400, "source_operation_id_required"),
    ]  # fmt: skip
    for n, (operation, status, code) in enumerate(cases):
        got_status, body = await client.commit(f"c_err_{n}", operation)
        assert (got_status, body["error"]) == (status, code), operation
        assert "SELECT" not in body.get("message", ""), "SQL text must not leak into answers"


async def test_sqlite_refuses_a_wal_echo(tmp_path: Path) -> None:
    prepared = prepare(f"sqlite:///{tmp_path / 'echo.db'}")
    client = Client(SQLSource(prepared, MODELS))
    status, body = await client.commit(
        "c_echo", create("t1"), intentHash="c" * 64, echo={"kind": "postgres-wal", "payload": "p"}
    )
    await client.close()
    assert (status, body["error"]) == (409, "source_commit_echo_not_supported")
    assert scalar(prepared, "SELECT COUNT(*) FROM tasks") == 0


async def test_expired_and_legacy_ledger_rows_are_not_replayed(
    client: Client, prepared: str
) -> None:
    await client.commit("c_old", create("t1"))
    await client.commit("c_legacy", create("t2"))
    execute(
        prepared,
        "UPDATE ablo_idempotency SET expires_at = '2000-01-01 00:00:00' WHERE client_tx_id = 'c_old'",
        "UPDATE ablo_idempotency SET request_hash = NULL WHERE client_tx_id = 'c_legacy'",
    )
    status, body = await client.commit("c_old", create("t1"))
    assert (status, body["error"]) == (409, "idempotency_key_expired")
    status, body = await client.commit("c_legacy", create("t2"))
    assert (status, body["error"]) == (409, "idempotency_conflict")


# The fallback hash connector 0.1.0 (before claimId) stored for this commit:
# ``CommitRequest.effective_intent_hash`` of that version, run on CLAIMED.
CLAIMED = {**create("t7"), "claimId": "clm_1"}
CLAIMED_HASH_0_1 = "a0786ea9a91d78567336e5ae4a1299bc17bf9a90b2c28a2f4df906a9e20b2360"


async def test_a_ledger_row_of_the_previous_version_still_replays(
    client: Client, prepared: str
) -> None:
    """claimId joined the fallback hash; a commit stored without it is still a replay."""
    status, first = await client.commit("c_claimed", CLAIMED)
    assert status == 200
    execute(
        prepared,
        f"UPDATE ablo_idempotency SET request_hash = '{CLAIMED_HASH_0_1}' "
        "WHERE client_tx_id = 'c_claimed'",
    )
    status, again = await client.commit("c_claimed", CLAIMED)
    assert (status, again) == (200, first)
    assert scalar(prepared, "SELECT COUNT(*) FROM ablo_outbox") == 1
    # Another intent under the same key is still a conflict.
    status, body = await client.commit("c_claimed", {**CLAIMED, "input": {"title": "other"}})
    assert (status, body["error"]) == (409, "idempotency_conflict")


# ------------------------------------------------------------ list queries

ROWS = [
    {"id": "a", "title": "Alpha", "priority": 3, "done": False},
    {"id": "b", "title": "alpha beta", "priority": 1, "done": True},
    {"id": "c", "title": "Gamma", "priority": None, "done": False},
    {"id": "d", "title": "delta_1%", "priority": 2, "done": True},
    {"id": "e", "title": "Epsilon", "priority": 3, "done": False},
]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ([["priority", 3]], "ae"),
        ([["priority", "=", None]], "c"),
        ([["priority", "!=", 3]], "bcd"),  # NULL is "not 3"
        ([["priority", "!=", None]], "abde"),
        ([["priority", "<", 3]], "bd"),
        ([["priority", "<=", 2]], "bd"),
        ([["priority", ">", 1]], "ade"),
        ([["priority", ">=", 3]], "ae"),
        ([["priority", "IN", [1, 2]]], "bd"),
        ([["priority", "IN", [1, None]]], "bc"),
        ([["priority", "IN", []]], ""),
        ([["priority", "NOT IN", [1, 2]]], "ace"),
        ([["priority", "NOT IN", [3, None]]], "bd"),
        ([["priority", "IS", None]], "c"),
        ([["priority", "IS NOT", None]], "abde"),
        ([["done", "IS", True]], "bd"),
        ([["title", "LIKE", "alpha%"]], "b"),  # case-sensitive on both databases
        ([["title", "NOT LIKE", "%A%"]], "bcde"),
        ([["title", "ILIKE", "alpha%"]], "ab"),
        ([["title", "NOT ILIKE", "%A%"]], "e"),
        ([["title", "LIKE", "delta\\_1\\%"]], "d"),
        ([["done", False], ["priority", ">", 2]], "ae"),
        ([{"field": "title", "op": "ILIKE", "value": "%ta%"}], "bd"),
    ],
)
async def test_where_operators(client: Client, where: list[Any], expected: str) -> None:
    await client.commit(
        "c_rows", *(create(r["id"], **{k: v for k, v in r.items() if k != "id"}) for r in ROWS)
    )
    page = await client.list(where=where)
    assert "".join(sorted(row["id"] for row in page["rows"])) == expected


async def test_where_mistakes_are_400s(client: Client) -> None:
    cases = [
        ([["nope", 1]], "source_unknown_field"),
        ([["priority", "IN", 1]], "source_where_invalid"),
        ([["priority", "<", None]], "source_where_invalid"),
        ([["priority", "=", [1]]], "source_where_invalid"),
        ([["title", "LIKE", 5]], "source_where_invalid"),
        ([["priority", "IS", 3]], "source_where_invalid"),
        ([["priority", "=", "three"]], "source_value_invalid"),
        ([["priority", "BETWEEN", 1]], "source_request_invalid"),
    ]
    for where, code in cases:
        status, body = await client({"type": "list", "model": "task", "query": {"where": where}})
        assert (status, body["error"]) == (400, code), where


def _collect_pages(pages: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for page in pages for row in page["rows"]]


async def _walk(client: Client, **query: Any) -> list[dict[str, Any]]:
    pages = [await client.list(**query)]
    while "nextCursor" in pages[-1]:
        pages.append(await client.list(**query, cursor=pages[-1]["nextCursor"]))
        assert len(pages) < 100, "pagination does not end"
    return pages


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_keyset_pages_follow_the_sort_with_no_repeats_or_gaps(
    client: Client, order: str
) -> None:
    priorities = [None, 1, 2, 2, 2, 3, None, 5, 1, 2, 4, 4, None, 3, 0, 2, 2, 1, 5, 3, None, 1, 0]
    rows = [create(f"t{n:02}", priority=p) for n, p in enumerate(priorities)]
    await client.commit("c_sorted", *rows)
    pages = await _walk(client, orderBy="priority", order=order, limit=4)
    ids = _collect_pages(pages)
    assert len(pages) == 6 and all(len(p["rows"]) == 4 for p in pages[:-1])

    def key(n: int) -> tuple[int, Any, int]:
        p = priorities[n]
        value = 0 if p is None else (p if order == "asc" else -p)
        return (p is None, value, n if order == "asc" else -n)  # NULLs last, then id

    assert ids == [f"t{n:02}" for n in sorted(range(len(priorities)), key=key)]


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_pages_ordered_by_a_boolean_column_follow_their_cursor(
    client: Client, order: str
) -> None:
    """A cursor after a true/false value compares with < and >, which
    SQLAlchemy refuses for a bare True or False (it was a 500)."""
    flags = [True, False, True, True, False, False, True, False, True]
    await client.commit("c_flags", *(create(f"t{n}", done=f) for n, f in enumerate(flags)))
    ids = _collect_pages(await _walk(client, orderBy="done", order=order, limit=2))
    descending = order == "desc"
    expected = sorted(range(len(flags)), key=lambda n: (flags[n], n), reverse=descending)
    assert ids == [f"t{n}" for n in expected]


async def test_a_nul_character_is_the_callers_mistake_where_the_database_refuses_it(
    client: Client,
) -> None:
    """PostgreSQL's text cannot hold NUL: psycopg refuses it before sending,
    with no SQLSTATE (it was a 500). SQLite stores it."""
    postgres = client.source.engine.dialect.name == "postgresql"
    await client.commit("c_nul_row", create("t1"))
    requests = [
        {"type": "list", "model": "task", "query": {"where": [["title", "a\u0000b"]]}},
        {"type": "load", "model": "task", "id": "t\u0000"},
    ]
    for body in requests:
        status, answer = await client(body)
        if postgres:
            assert (status, answer["error"]) == (400, "source_value_invalid"), body
        else:
            assert status == 200, answer
    status, answer = await client.commit("c_nul", create("t2", title="a\u0000b"))
    assert status == (400 if postgres else 200), answer


async def test_a_lone_surrogate_in_a_json_column_is_the_callers_400(prepared: str) -> None:
    """A JSON document is written as JSON text, which a lone surrogate (from
    a ``"\\ud800"`` escape) cannot be encoded into: it was a 500 on
    PostgreSQL and a 400 naming no field on SQLite."""
    json_type = "JSONB" if dialect_of(prepared) == "postgresql" else "JSON"
    execute(prepared, f"CREATE TABLE docs (id {key_type(prepared)} PRIMARY KEY, body {json_type})")
    client = Client(SQLSource(prepared, {"models": {"doc": {"table": "docs"}}}))
    try:
        for n, body in enumerate(
            [{"a": "\ud800"}, ["fine", {"nested": ["\udfff"]}], {"key\ud800": 1}, "\ud800"]
        ):
            create_doc = {"type": "CREATE", "model": "doc", "id": f"d{n}", "input": {"body": body}}
            status, answer = await client.commit(f"c_doc_{n}", create_doc)
            assert (status, answer["error"]) == (400, "source_value_invalid"), answer
            assert "'body'" in answer["message"], answer
        assert client.source.healthy
        good = {"type": "CREATE", "model": "doc", "id": "ok", "input": {"body": {"a": ["é", 1]}}}
        status, answer = await client.commit("c_doc_ok", good)
        assert (status, answer["rows"][0]["body"]) == (200, {"a": ["é", 1]}), answer
    finally:
        await client.close()


async def test_pages_are_stable_under_concurrent_inserts(client: Client) -> None:
    await client.commit("c_base", *(create(f"t{n:02}", priority=n % 4) for n in range(20)))
    query = {"orderBy": "priority", "limit": 5}
    first = await client.list(**query)
    pages = [first]
    n = 0
    while "nextCursor" in pages[-1]:
        # New rows land before, at and after the cursor position between pages.
        await client.commit(f"c_ins_{n}", *(create(f"new{n}_{p}", priority=p) for p in range(4)))
        n += 1
        pages.append(await client.list(**query, cursor=pages[-1]["nextCursor"]))
    ids = _collect_pages(pages)
    assert len(ids) == len(set(ids)), "a row repeated across pages"
    assert {f"t{n:02}" for n in range(20)} <= set(ids), "an existing row was skipped"


async def test_limit_is_capped_and_default_order_is_by_id(prepared: str) -> None:
    client = Client(SQLSource(prepared, MODELS, page_size=3, max_page_size=7))
    try:
        await client.commit("c_cap", *(create(f"t{n:02}") for n in range(10)))
        assert len((await client.list(limit=5000))["rows"]) == 7
        default = await client.list()
        assert [r["id"] for r in default["rows"]] == ["t00", "t01", "t02"]
        assert await client.list(limit=0) == {"rows": []}
        descending = await _walk(client, order="desc")
        assert _collect_pages(descending) == [f"t{n:02}" for n in reversed(range(10))]
    finally:
        await client.close()


# ------------------------------------------------------------ injection


INJECTED = [
    "title; DROP TABLE tasks; --",
    'title" = title OR "1"="1',
    "tasks.title",
    "1=1) OR (1",
    "Title",
]


async def test_injection_through_names_operators_and_values_is_refused(
    client: Client, prepared: str
) -> None:
    await client.commit("c_inj", create("t1", title="A"))
    for name in INJECTED:
        for query in ({"where": [[name, "x"]]}, {"orderBy": name}):
            status, body = await client({"type": "list", "model": "task", "query": query})
            assert (status, body["error"]) == (400, "source_unknown_field"), (name, body)
        status, body = await client.commit(f"c_{uuid.uuid4().hex}", update("t1", **{name: "x"}))
        assert (status, body["error"]) == (400, "source_unknown_field")
        for body_ in (
            {"type": "load", "model": name, "id": "t1"},
            {"type": "list", "model": name},
        ):
            status, answer = await client(body_)
            assert (status, answer["error"]) == (400, "source_unknown_model")
    status, body = await client({"type": "list", "model": "task", "query": {"where": [["title", "= 'A' OR 1=1 --", "x"]]}})  # fmt: skip
    assert (status, body["error"]) == (400, "source_request_invalid")
    # Values are data, never SQL.
    for value in ["' OR '1'='1", "A'; DELETE FROM tasks; --"]:
        page = await client.list(where=[["title", value]])
        assert page["rows"] == []
    found = await client.ok({"type": "load", "model": "task", "id": "t1' OR '1'='1"})
    assert found == {"row": None}
    assert scalar(prepared, "SELECT COUNT(*) FROM tasks") == 1


async def test_tampered_cursors_are_refused(client: Client) -> None:
    await client.commit("c_cur", *(create(f"t{n}", priority=n) for n in range(5)))
    page = await client.list(orderBy="priority", limit=2)
    genuine = page["nextCursor"]

    def forge(payload: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")

    bad = [
        "not a cursor",
        "!!!!",
        genuine[:-3],
        forge({"v": 1, "o": "priority", "d": False, "k": ["1; DROP TABLE tasks", "t1"]}),
        forge({"v": 1, "o": "title; DROP TABLE tasks", "d": False, "k": [1, "t1"]}),
        forge({"v": 2, "o": "priority", "d": False, "k": [1, "t1"]}),
        forge([1, 2]),
        "A" * 5000,
    ]
    for cursor in bad:
        status, body = await client(
            {
                "type": "list",
                "model": "task",
                "query": {"orderBy": "priority", "limit": 2, "cursor": cursor},
            }
        )
        assert (status, body["error"]) == (400, "source_cursor_invalid"), cursor
    # A genuine cursor for another order is refused, not misread.
    status, body = await client(
        {"type": "list", "model": "task", "query": {"orderBy": "title", "cursor": genuine}}
    )
    assert (status, body["error"]) == (400, "source_cursor_invalid")
    for cursor in ["-1", "1 OR 1=1", "\uff11\uff12", "9" * 30]:
        status, body = await client({"type": "events", "cursor": cursor})
        assert (status, body["error"]) == (400, "source_cursor_invalid"), cursor


# ------------------------------------------------------------ model map and schema


async def test_model_map_overrides_fields_and_excludes_columns(
    prepared: str, tmp_path: Path
) -> None:
    execute(
        prepared,
        f"CREATE TABLE people (person_key {key_type(prepared)} PRIMARY KEY, full_name TEXT, "
        "secret TEXT)",
    )
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.task]\ntable = "tasks"\n\n'
        '[models.Person]\ntable = "people"\nexclude = ["secret"]\n'
        '[models.Person.fields]\nid = "person_key"\nname = "full_name"\n'
    )
    client = Client(SQLSource(prepared, ModelMap.from_toml(models)))
    try:
        status, body = await client.commit(
            "c_people", {"type": "CREATE", "model": "Person", "id": "p1", "input": {"name": "Ada"}}
        )
        assert (status, body["rows"]) == (200, [{"id": "p1", "name": "Ada"}])
        status, body = await client.commit(
            "c_secret", {"type": "UPDATE", "model": "Person", "id": "p1", "input": {"secret": "x"}}
        )
        assert (status, body["error"]) == (400, "source_unknown_field")
        assert scalar(prepared, "SELECT full_name FROM people WHERE person_key = 'p1'") == "Ada"
        assert (await client.ok({"type": "load", "model": "Person", "id": "p1"}))["row"][
            "name"
        ] == "Ada"
    finally:
        await client.close()


async def test_without_a_map_every_table_is_served_by_its_name(prepared: str) -> None:
    execute(prepared, f"CREATE TABLE notes (id {key_type(prepared)} PRIMARY KEY, body_text TEXT)")
    source = SQLSource(prepared)
    client = Client(source)
    try:
        assert sorted({m.name for m in source.prepare().values()}) == ["notes", "tasks"]
        status, body = await client.commit(
            "c_note", {"type": "CREATE", "model": "notes", "id": "n1", "input": {"bodyText": "hi"}}
        )
        assert (status, body["rows"]) == (200, [{"id": "n1", "bodyText": "hi"}])
    finally:
        await client.close()


def test_model_map_mistakes_are_config_errors(prepared: str, tmp_path: Path) -> None:
    execute(
        prepared,
        "CREATE TABLE keyless (name TEXT)",
        f"CREATE TABLE twins (id TEXT, due_at TEXT, {quoted(prepared, 'dueAt')} TEXT)",
    )
    cases = [
        ({"task": {"table": "nope"}}, "table 'nope' does not exist"),
        ({"task": {"table": "tasks", "fields": {"x": "no_column"}}}, "names column 'no_column'"),
        ({"k": {"table": "keyless"}}, "no column for field 'id'"),
        ({"t": {"table": "twins"}}, "both serve field 'dueAt'"),
        ({"task": {"table": "tasks", "colour": "red"}}, "unknown keys ['colour']"),
        ({"task": {"table": "tasks", "exclude": ["nope"]}}, "excluded column 'nope'"),
        (
            {"task": {"table": "tasks", "fields": {"name": "title", "label": "title"}}},
            "fields 'name' and 'label' both map column 'title'",
        ),
    ]
    for models, message in cases:
        with pytest.raises(
            ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
        ):
            SQLSource(prepared, {"models": models}).prepare()
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[models.task\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ModelMap.from_toml(bad_toml)
    with pytest.raises(ConfigError, match="has no models"):
        ModelMap.from_dict({})


def test_serving_needs_the_ledger_and_outbox(database_url: str) -> None:
    execute(database_url, TASKS_DDL[dialect_of(database_url)])
    with pytest.raises(ConfigError, match="no ablo_idempotency table: run `ablo-connector migrate"):
        SQLSource(database_url, MODELS).prepare()


def test_migrate_is_idempotent_and_uses_the_engines_names(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        assert migrate(engine) == [
            "created table ablo_idempotency",
            "created table ablo_outbox",
            "created index ablo_idempotency_expires_at",
        ]
        assert migrate(engine) == []
        inspector = sa.inspect(engine)
        # Retention finds expired ledger rows by it, without a scan of the ledger.
        assert ["expires_at"] in [
            i["column_names"] for i in inspector.get_indexes("ablo_idempotency")
        ]
        ledger = {c["name"]: c for c in inspector.get_columns("ablo_idempotency")}
        outbox = {c["name"]: c for c in inspector.get_columns("ablo_outbox")}
        assert list(ledger) == [
            "client_tx_id",
            "response",
            "request_hash",
            "expires_at",
            "created_at",
        ]
        assert list(outbox) == [
            "cursor", "id", "model", "entity_id", "type", "data", "organization_id",
            "client_tx_id", "correlation_id", "transaction_id", "occurred_at", "created_at",
        ]  # fmt: skip
        assert inspector.get_pk_constraint("ablo_idempotency")["constrained_columns"] == [
            "client_tx_id"
        ]
        assert inspector.get_pk_constraint("ablo_outbox")["constrained_columns"] == ["cursor"]
        if engine.dialect.name == "postgresql":
            types = {name: str(c["type"]) for name, c in {**ledger, **outbox}.items()}
            assert types["response"] == "JSONB" and types["data"] == "JSONB"
            assert types["expires_at"] == "TIMESTAMP" and ledger["expires_at"]["type"].timezone
            assert types["cursor"] == "BIGINT" and "nextval" in str(outbox["cursor"]["default"])
    finally:
        engine.dispose()


OLD_TABLES = {
    # A ledger from before intent hashing, bounded retention and created_at,
    # and an outbox from before correlation and operation ids.
    "postgresql": (
        "CREATE TABLE ablo_idempotency (client_tx_id TEXT PRIMARY KEY, response JSONB NOT NULL)",
        "CREATE TABLE ablo_outbox (cursor BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
        "model TEXT NOT NULL, entity_id TEXT NOT NULL, type TEXT NOT NULL, data JSONB, "
        "organization_id TEXT, client_tx_id TEXT, occurred_at BIGINT)",
    ),
    "sqlite": (
        "CREATE TABLE ablo_idempotency (client_tx_id TEXT PRIMARY KEY, response JSON NOT NULL)",
        "CREATE TABLE ablo_outbox (cursor INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL "
        "UNIQUE, model TEXT NOT NULL, entity_id TEXT NOT NULL, type TEXT NOT NULL, data JSON, "
        "organization_id TEXT, client_tx_id TEXT, occurred_at INTEGER)",
    ),
    "mysql": (
        "CREATE TABLE ablo_idempotency (client_tx_id VARCHAR(255) PRIMARY KEY, response JSON "
        "NOT NULL)",
        "CREATE TABLE ablo_outbox (`cursor` BIGINT AUTO_INCREMENT PRIMARY KEY, id VARCHAR(320) "
        "NOT NULL UNIQUE, model TEXT NOT NULL, entity_id TEXT NOT NULL, type TEXT NOT NULL, "
        "data JSON, organization_id TEXT, client_tx_id TEXT, occurred_at BIGINT)",
    ),
}


async def test_migrate_upgrades_older_tables_until_run_accepts_them(database_url: str) -> None:
    execute(
        database_url, TASKS_DDL[dialect_of(database_url)], *OLD_TABLES[dialect_of(database_url)]
    )
    execute(
        database_url, "INSERT INTO ablo_idempotency (client_tx_id, response) VALUES ('old', '[]')"
    )
    with pytest.raises(ConfigError, match=r"ablo_idempotency lacks columns \['request_hash'"):
        SQLSource(database_url, MODELS).prepare()  # what run says before
    engine = create_database_engine(database_url)
    try:
        assert migrate(engine) == [
            "added column ablo_idempotency.request_hash",
            "added column ablo_idempotency.expires_at",
            "added column ablo_idempotency.created_at",
            "added column ablo_outbox.correlation_id",
            "added column ablo_outbox.transaction_id",
            "added column ablo_outbox.created_at",
            "created index ablo_idempotency_expires_at",
        ]
        assert migrate(engine) == []
    finally:
        engine.dispose()
    client = Client(SQLSource(database_url, MODELS))  # what run says after
    try:
        client.source.prepare()
        status, _ = await client.commit("c_new", create("t1"))
        assert status == 200
        # The old row never expires, and predates intent hashing: not replayed.
        status, body = await client.commit("old", create("t2"))
        assert (status, body["error"]) == (409, "idempotency_conflict")
        assert [e["correlationId"] for e in (await client.events())["events"]] == ["c_new"]
    finally:
        await client.close()


def test_migrate_refuses_a_table_it_cannot_complete(database_url: str) -> None:
    execute(
        database_url,
        f"CREATE TABLE ablo_outbox ({quoted(database_url, 'cursor')} INTEGER PRIMARY KEY, data TEXT)",
    )
    engine = create_database_engine(database_url)
    try:
        with pytest.raises(
            ConfigError, match="ablo_outbox lacks column 'id', which migrate cannot add"
        ):
            migrate(engine)
        # Nothing was half done: the ledger it would have created is not there.
        assert not sa.inspect(engine).has_table("ablo_idempotency")
    finally:
        engine.dispose()


def test_database_urls_are_checked_and_passwords_hidden() -> None:
    from connector.adapters.sql import database_url

    assert database_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    assert database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("sqlite:///x.db").drivername == "sqlite+pysqlite"
    assert database_url("mysql://u@h/db").drivername == "mysql+asyncmy"
    assert database_url("mariadb://u@h/db?charset=utf8mb4").drivername == "mariadb+asyncmy"
    for bad, message in [
        ("oracle://u@h/db", "unsupported database 'oracle'"),
        ("sqlite://", "in-memory SQLite"),
        ("postgresql+psycopg2://u@h/db", "psycopg 3"),
        ("mysql+mysqldb://u@h/db", "served through asyncmy, not 'mysqldb'"),
        ("mysql://u@h", "names no database"),
        ("mysql://u@h/db?charset=latin1", "utf8mb4"),
        ("not a url", "not valid"),
    ]:
        with pytest.raises(ConfigError, match=message):
            database_url(bad)
    for url in ("postgresql://app:hunter2@db.internal/app", "mysql://app:hunter2@db.internal/app"):
        assert "hunter2" not in repr(SQLSource(url))


# ------------------------------------------------------------ PostgreSQL only


async def test_wal_echo_is_in_the_same_transaction(postgres_server: Any) -> None:
    url = create_database(postgres_server)
    slot = f"s_{uuid.uuid4().hex[:8]}"
    try:
        prepare(url)
        execute(url, f"SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')")
        client = Client(SQLSource(url, MODELS))
        payload = json.dumps({"correlationId": "c_wal", "n": "é ✓"})
        echo = {"kind": "postgres-wal", "payload": payload}
        try:
            status, _ = await client.commit("c_wal", create("t1"), intentHash="d" * 64, echo=echo)
            assert status == 200
            await client.commit("c_wal", create("t1"), intentHash="d" * 64, echo=echo)  # replay
            # A commit that fails rolls its echo back with it.
            status, _ = await client.commit("c_wal_fail", create("t1"), intentHash="e" * 64, echo={"kind": "postgres-wal", "payload": "rolled back"})  # fmt: skip
            assert status == 409
            # Without the engine's intentHash a WAL-correlated commit is refused.
            status, body = await client.commit("c_wal_nohash", create("t9"), echo=echo)
            assert (status, body["error"]) == (409, "idempotency_conflict")
        finally:
            await client.close()
        changes = execute(
            url, f"SELECT xid, data FROM pg_logical_slot_get_changes('{slot}', NULL, NULL)"
        )[0]
        messages = [(xid, data) for xid, data in changes if data.startswith("message:")]
        assert len(messages) == 1, changes
        xid, message = messages[0]
        assert "transactional: 1 prefix: ablo" in message
        assert message.endswith(f"content:{payload}")
        same_transaction = [data for x, data in changes if x == xid]
        assert any(
            d.startswith("table public.tasks: INSERT:") and "'t1'" in d for d in same_transaction
        )
        assert any(d.startswith("table public.ablo_outbox: INSERT:") for d in same_transaction)
        assert not any("rolled back" in data for _, data in changes)
    finally:
        execute(url, f"SELECT pg_drop_replication_slot('{slot}')")
        drop_database(postgres_server, url)


async def test_outbox_cursors_follow_commit_order(postgres_server: Any) -> None:
    from connector.adapters.sql.source import OUTBOX_LOCK

    url = prepare(create_database(postgres_server))
    client = Client(SQLSource(url, MODELS))
    engine = create_database_engine(url)
    try:
        with engine.connect() as other:
            # Another writer's commit is in flight: it holds the outbox lock and
            # has drawn its cursor, but has not committed.
            in_flight = other.begin()
            other.execute(sa.select(sa.func.pg_advisory_xact_lock(OUTBOX_LOCK)))
            other.exec_driver_sql(
                "INSERT INTO ablo_outbox (id, model, entity_id, type) "
                "VALUES ('other:0', 'task', 'x', 'CREATE')"
            )
            later = asyncio.create_task(client.commit("c_later", create("t1")))
            await asyncio.sleep(0.5)
            # The later commit waits instead of publishing a cursor beyond an
            # uncommitted one, so a reader cannot skip past it.
            assert not later.done()
            assert (await client.events())["events"] == []
            in_flight.commit()
        assert (await later)[0] == 200
        events = (await client.events())["events"]
        assert [e["id"] for e in events] == ["other:0", "c_later:0"]
        assert int(events[0]["cursor"]) < int(events[1]["cursor"])
    finally:
        await client.close()
        engine.dispose()
        drop_database(postgres_server, url)


async def test_types_json_lacks_are_served_in_a_json_form(postgres_server: Any) -> None:
    url = prepare(create_database(postgres_server))
    execute(
        url,
        "CREATE TABLE odd (id TEXT PRIMARY KEY, span INT4RANGE, period INTERVAL, addr INET, "
        "tags TEXT[], doc JSONB, amount NUMERIC(10, 2))",
        "INSERT INTO odd VALUES ('o1', '[1,5)', '90 seconds', '10.0.0.1', '{a,b}', "
        "'{\"k\": [1, null]}', 12.50)",
    )
    client = Client(SQLSource(url, {"models": {"odd": {"table": "odd"}}}))
    try:
        row = (await client.ok({"type": "load", "model": "odd", "id": "o1"}))["row"]
        assert row == {
            "id": "o1", "period": "PT1M30S", "addr": "10.0.0.1",
            "span": {"lower": 1, "upper": 5, "bounds": "[)", "empty": False},
            "tags": ["a", "b"], "doc": {"k": [1, None]}, "amount": "12.50",
        }  # fmt: skip
    finally:
        await client.close()
        drop_database(postgres_server, url)


async def test_a_statement_past_its_timeout_is_cancelled_in_the_database(postgres_server: Any) -> None:  # fmt: skip
    url = prepare(create_database(postgres_server))
    client = Client(SQLSource(url, MODELS, statement_timeout=0.5))
    engine = create_database_engine(url)
    try:
        await client.commit("c_t", create("t1"))
        with engine.connect() as other:
            holding = other.begin()
            other.exec_driver_sql("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            started = asyncio.get_running_loop().time()
            status, body = await client({"type": "load", "model": "task", "id": "t1"})
            waited = asyncio.get_running_loop().time() - started
            holding.rollback()
        assert (status, body["error"]) == (504, "source_database_timeout")
        assert 0.4 < waited < 3
        assert (await client.ok({"type": "load", "model": "task", "id": "t1"}))["row"]
    finally:
        await client.close()
        engine.dispose()
        drop_database(postgres_server, url)


async def test_least_privilege_role_from_the_readme_is_enough(postgres_server: Any) -> None:
    url = create_database(postgres_server)
    role = f"app_{uuid.uuid4().hex[:8]}"
    try:
        prepare(url)
        execute(
            url,
            f"CREATE ROLE {role} LOGIN",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON tasks TO {role}",
            f"GRANT SELECT, INSERT, UPDATE ON ablo_idempotency TO {role}",
            f"GRANT SELECT, INSERT ON ablo_outbox TO {role}",
            f"GRANT USAGE ON SEQUENCE ablo_outbox_cursor_seq TO {role}",
        )
        client = Client(SQLSource(url.replace("postgres@", f"{role}@"), MODELS))
        try:
            echo = {"kind": "postgres-wal", "payload": "granted"}
            status, body = await client.commit(
                "c_role", create("t1"), intentHash="f" * 64, echo=echo
            )
            assert status == 200, body
            assert (await client.commit("c_role", create("t1"), intentHash="f" * 64, echo=echo))[
                0
            ] == 200
            status, _ = await client.commit(
                "c_role_2", {"type": "DELETE", "model": "task", "id": "t1"}
            )
            assert status == 200
            page = await client.events()
            assert len(page["events"]) == 2
            # A drained poll checks its cursor against the outbox's sequence.
            assert (await client.events(page["nextCursor"]))["events"] == []
        finally:
            await client.close()
    finally:
        drop_database(postgres_server, url)
        execute(postgres_server.dsn, f"DROP ROLE IF EXISTS {role}")


async def test_the_urls_libpq_options_are_kept_beside_the_statement_timeout(
    postgres_server: Any,
) -> None:
    """A URL's ``options`` (here a search_path) was replaced by the adapter's
    statement_timeout: the connector served and wrote another schema's table."""
    base = create_database(postgres_server)
    execute(
        base,
        "CREATE SCHEMA tenant_a",
        "CREATE SCHEMA tenant_b",
        *(TASKS_DDL["postgresql"].replace("TABLE tasks", f"TABLE {s}.tasks") for s in ("tenant_a", "tenant_b")),
        "INSERT INTO tenant_a.tasks (id, title) VALUES ('a1', 'of tenant a')",
        "INSERT INTO tenant_b.tasks (id, title) VALUES ('b1', 'of tenant b')",
        # What each connection was given: read back through the adapter itself.
        "CREATE VIEW tenant_a.session AS SELECT 'mine'::text AS id, "
        "current_setting('search_path') AS path, current_setting('work_mem') AS work_mem, "
        "current_setting('statement_timeout') AS timeout",
    )  # fmt: skip
    options = "?options=-c%20search_path%3Dtenant_a,public%20-c%20work_mem%3D5MB"
    url = base + options
    engine = create_database_engine(url)
    migrate(engine)  # puts the ledger and outbox in tenant_a too
    engine.dispose()
    models = {"models": {"task": {"table": "tasks"}, "session": {"table": "session"}}}
    client = Client(SQLSource(url, models))
    try:
        own_connections = {"type": "load", "model": "session", "id": "mine"}
        sqlalchemy_pool = {"type": "list", "model": "session", "query": {"where": [["id", "IN", ["mine"]]]}}  # fmt: skip
        for request in (own_connections, sqlalchemy_pool):
            answer = await client.ok(request)
            (row,) = [answer["row"]] if "row" in answer else answer["rows"]
            settings = (row["path"], row["workMem"], row["timeout"])
            assert settings == ("tenant_a,public", "5MB", "30s")
        assert [r["id"] for r in (await client.list())["rows"]] == ["a1"]
        found = await client.ok({"type": "load", "model": "task", "id": "a1"})
        assert found["row"]["title"] == "of tenant a"
        assert (await client.ok({"type": "load", "model": "task", "id": "b1"}))["row"] is None
        status, _ = await client.commit("c_tenant", create("a2"))
        assert status == 200
        assert scalar(base, "SELECT count(*) FROM tenant_a.tasks") == 2
        assert scalar(base, "SELECT count(*) FROM tenant_b.tasks") == 1
        assert scalar(base, "SELECT count(*) FROM tenant_a.ablo_outbox") == 1
    finally:
        await client.close()
    # The user's own statement_timeout wins over the adapter's.
    client = Client(SQLSource(url + "%20-c%20statement_timeout%3D7s", models))
    try:
        row = (await client.ok({"type": "load", "model": "session", "id": "mine"}))["row"]
        assert (row["path"], row["timeout"]) == ("tenant_a,public", "7s")
    finally:
        await client.close()
        drop_database(postgres_server, base)


async def test_database_restart_answers_503_then_recovers(postgres: Any) -> None:
    url = prepare(postgres.dsn)
    client = Client(SQLSource(url, MODELS))
    try:
        await client.commit("c_before", create("t1"))
        await asyncio.to_thread(postgres.stop, "immediate")
        status, body = await client({"type": "load", "model": "task", "id": "t1"})
        assert (status, body["error"]) == (503, "source_database_unavailable")
        status, body = await client.commit("c_during", create("t2"))
        assert status == 503
        await asyncio.to_thread(postgres.start)
        assert (await client.ok({"type": "load", "model": "task", "id": "t1"}))["row"]["id"] == "t1"
        status, _ = await client.commit("c_during", create("t2"))  # the engine's retry
        assert status == 200
    finally:
        await client.close()


# ------------------------------------------------------------ the schema changes while serving


def _changes_logged(caplog: pytest.LogCaptureFixture, model: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "connector.sql"
        and r.levelno >= logging.WARNING
        and repr(model) in r.getMessage()
    ]


async def test_a_column_type_migration_is_served_without_a_500(
    postgres_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """ALTER COLUMN … TYPE under a served table: every statement psycopg had
    prepared failed with "cached plan must not change result type" (0A000),
    answered 500, on every read connection until it was recycled 30 minutes
    later. Now the statements are prepared again and the request retried."""
    url = prepare(create_database(postgres_server))
    execute(
        url,
        "CREATE TABLE counters (id TEXT PRIMARY KEY, n INTEGER, label TEXT)",
        "INSERT INTO counters VALUES ('c1', 1, 'one')",
    )
    client = Client(SQLSource(url, {"models": {"counter": {"table": "counters"}}}, pool_size=2))
    statuses: list[int] = []

    async def answer(body: dict[str, Any]) -> dict[str, Any]:
        status, found = await client(body)
        statuses.append(status)
        assert status == 200, found
        return found

    load = {"type": "load", "model": "counter", "id": "c1"}
    # A page on the read connections, and one through SQLAlchemy's pool (an IN list).
    page = {"type": "list", "model": "counter", "query": {"where": [["label", "!=", "x"]]}}
    in_list = {"type": "list", "model": "counter", "query": {"where": [["id", "IN", ["c1"]]]}}

    def update_counter(key: int, **values: Any) -> dict[str, Any]:
        operation = {"type": "UPDATE", "model": "counter", "id": "c1", "input": values}
        return {"type": "commit", "correlationId": f"c_{key}", "operations": [operation]}

    try:
        # psycopg prepares what SQLAlchemy runs from its fifth run on a connection.
        for n in range(6):
            for body in (load, page, in_list, update_counter(n, label=f"run {n}")):
                await answer(body)
        caplog.set_level(logging.INFO, logger="connector.sql")
        execute(
            url,
            "ALTER TABLE counters ALTER COLUMN n TYPE bigint",
            "ALTER TABLE counters ALTER COLUMN label TYPE varchar(200)",
            "UPDATE counters SET n = 5000000000",
        )
        assert (await answer(load))["row"]["n"] == 5_000_000_000
        assert (await answer(page))["rows"][0]["n"] == 5_000_000_000
        assert (await answer(in_list))["rows"][0]["n"] == 5_000_000_000
        # Reflected again: the column holds 64 bits now (a 32-bit one refused this).
        changed = await answer(update_counter(100, n=6_000_000_000))
        assert changed["rows"][0]["n"] == 6_000_000_000
        (line,) = _changes_logged(caplog, "counter")
        assert "column n changed type from INTEGER to BIGINT" in line
        assert "column label changed type from TEXT to VARCHAR(200)" in line

        # Again, with requests in flight: retried, or at worst a retryable 503.
        execute(url, "ALTER TABLE counters ALTER COLUMN n TYPE numeric(20, 0)")
        bodies = [load, page, in_list] * 8 + [update_counter(200 + n, label="x") for n in range(4)]
        answers = await asyncio.gather(*(client(body) for body in bodies))
        assert {status for status, _ in answers} <= {200, 503}, answers
        assert (await answer(load))["row"]["n"] == "6000000000"  # numeric: a decimal string
        assert set(statuses) == {200}, "no request answered anything but 200 one at a time"
    finally:
        await client.close()
        drop_database(postgres_server, url)


async def test_a_dropped_column_or_table_is_the_sources_503_until_it_is_back(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A dropped or renamed column or table answered 400 source_query_invalid
    (SQLite: 503 source_database_unavailable, marking a healthy database
    down), which the engine does not retry. Now: the model is reflected
    again; one that can still be served as mapped is served as it is now,
    one that cannot answers 503 source_schema_changed and the probe names it
    until it is back."""
    url = prepare(database_url)
    execute(
        url,
        f"CREATE TABLE notes (id {key_type(url)} PRIMARY KEY, body TEXT, extra TEXT)",
        "INSERT INTO notes VALUES ('n1', 'hello', 'x')",
        "INSERT INTO tasks (id, title, due_at) VALUES ('t1', 'A', '2026-01-02 03:04:05')",
    )
    models = {
        "models": {
            "task": {"table": "tasks", "fields": {"dueAt": "due_at"}},
            "note": {"table": "notes"},
        }
    }
    source = SQLSource(url, models)
    client = Client(source)
    task = {"type": "load", "model": "task", "id": "t1"}
    note = {"type": "load", "model": "note", "id": "n1"}
    try:
        await client.ok(task)
        await client.ok(note)
        await client.list()
        caplog.set_level(logging.INFO, logger="connector.sql")

        # A column no mapping names is dropped: served as the table is now.
        execute(url, "ALTER TABLE notes DROP COLUMN extra")
        assert (await client.ok(note))["row"] == {"id": "n1", "body": "hello"}
        assert _changes_logged(caplog, "note") == [
            "model 'note' (table notes) changed: column extra is gone; serving it as it is now"
        ]
        await source.probe()  # nothing the map needs is missing

        # A mapped column is renamed: that model cannot be served as mapped.
        execute(url, "ALTER TABLE tasks RENAME COLUMN due_at TO deadline")
        for request in (task, {"type": "list", "model": "task"}):
            status, body = await client(request)
            assert (status, body["error"]) == (503, "source_schema_changed"), body
            assert "'due_at'" in body["message"] and body["model"] == "task", body
        status, body = await client.commit("c_gone", update("t1", title="B"))
        assert (status, body["error"]) == (503, "source_schema_changed"), body
        assert _changes_logged(caplog, "task") == [
            "cannot serve model 'task' any more: field 'dueAt' names column 'due_at', which "
            "does not exist; it answers 503 source_schema_changed until it can"
        ]
        with pytest.raises(SourceError) as probed:
            await source.probe()
        assert probed.value.code == "source_schema_changed"
        assert "model 'task'" in probed.value.message and "'due_at'" in probed.value.message
        assert (await client.ok(note))["row"]["body"] == "hello"  # the other model serves on
        assert source.healthy, "the database itself is fine"

        # A table is renamed; meanwhile a column is added to it.
        execute(
            url,
            "ALTER TABLE notes RENAME TO notes_old",
            "ALTER TABLE notes_old ADD COLUMN color TEXT",
        )
        status, body = await client(note)
        assert (status, body["error"]) == (503, "source_schema_changed"), body
        assert "table 'notes' does not exist" in body["message"]
        with pytest.raises(SourceError) as probed:
            await source.probe()
        assert "model 'task'" in probed.value.message and "model 'note'" in probed.value.message

        # Both are put back: the probe finds them, with no restart.
        execute(
            url,
            "ALTER TABLE notes_old RENAME TO notes",
            "ALTER TABLE tasks RENAME COLUMN deadline TO due_at",
        )
        await source.probe()
        assert (await client.ok(note))["row"] == {"id": "n1", "body": "hello", "color": None}
        assert (await client.ok(task))["row"]["dueAt"].startswith("2026-01-02")
        status, _ = await client.commit("c_back", update("t1", title="B"))
        assert status == 200
    finally:
        await client.close()


async def test_a_dropped_outbox_answers_commits_and_events_503_until_migrated_again(
    client: Client, prepared: str
) -> None:
    await client.commit("c_before", create("t1"))
    execute(prepared, "DROP TABLE ablo_outbox")
    status, body = await client.commit("c_during", create("t2"))
    assert (status, body["error"]) == (503, "source_schema_changed"), body
    assert "no ablo_outbox table" in body["message"]
    status, body = await client({"type": "events"})
    assert (status, body["error"]) == (503, "source_schema_changed"), body
    assert (await client.ok({"type": "load", "model": "task", "id": "t1"}))["row"]["id"] == "t1"
    with pytest.raises(SourceError) as probed:
        await client.source.probe()
    assert probed.value.code == "source_schema_changed" and "ablo_outbox" in probed.value.message
    engine = create_database_engine(prepared)
    migrate(engine)
    engine.dispose()
    await client.source.probe()
    status, _ = await client.commit("c_during", create("t2"))  # the engine's retry
    assert status == 200
    assert [e["entityId"] for e in (await client.events())["events"]] == ["t2"]


def test_sqlite_needs_nothing_but_the_standard_library(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE tasks (id TEXT PRIMARY KEY, title TEXT)")
    engine = create_database_engine(f"sqlite:///{db}")
    migrate(engine)
    assert engine.dialect.driver == "pysqlite"
    engine.dispose()


async def test_a_subclass_overrides_one_operation_and_keeps_the_rest(prepared: str) -> None:
    class OpenTasks(SQLSource):
        """Lists only rows that are not archived; everything else is the adapter's."""

        async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:
            where = [*query.where, Condition(field="archivedAt", op="IS", value=None)]
            return await super().list(model, query.model_copy(update={"where": where}), ctx)

    client = Client(OpenTasks(prepared, MODELS))
    try:
        await client.commit("c_sub", create("t1"), create("t2"))
        await client.commit("c_sub_archive", {"type": "ARCHIVE", "model": "task", "id": "t2"})
        assert [row["id"] for row in (await client.list())["rows"]] == ["t1"]
        assert (await client.ok({"type": "load", "model": "task", "id": "t2"}))["row"]["id"] == "t2"
    finally:
        await client.close()


async def test_integer_ids_travel_as_strings(prepared: str) -> None:
    execute(prepared, "CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER)")
    client = Client(SQLSource(prepared, {"models": {"counter": {"table": "counters"}}}))
    try:
        operations = [
            {"type": "CREATE", "model": "counter", "id": str(i), "input": {"n": i}}
            for i in (7, 8, 10)
        ]
        status, body = await client.commit("c_int", *operations)
        assert (status, [r["id"] for r in body["rows"]]) == (200, ["7", "8", "10"])
        assert (await client.ok({"type": "load", "model": "counter", "id": "10"}))["row"] == {
            "id": "10",
            "n": 10,
        }
        pages = [await client.ok({"type": "list", "model": "counter", "query": {"limit": 2}})]
        pages.append(await client.ok({"type": "list", "model": "counter", "query": {"limit": 2, "cursor": pages[0]["nextCursor"]}}))  # fmt: skip
        assert _collect_pages(pages) == ["7", "8", "10"]  # numeric order, not text order
        status, body = await client({"type": "load", "model": "counter", "id": "ten"})
        assert (status, body["error"]) == (400, "source_value_invalid")
        assert [e["entityId"] for e in (await client.events())["events"]] == ["7", "8", "10"]
        archive = {"type": "ARCHIVE", "model": "counter", "id": "7"}
        status, body = await client.commit("c_int_archive", archive)
        assert (status, body["error"]) == (400, "source_archive_not_supported")
    finally:
        await client.close()


def test_a_value_with_no_json_form_is_served_as_its_text() -> None:
    from connector.adapters.sql.values import to_json_row

    class Point:
        def __str__(self) -> str:
            return "(1,2)"

    assert to_json_row({"at": Point(), "n": 1}) == {"at": "(1,2)", "n": 1}


def test_a_page_converted_at_once_is_each_row_converted_alone() -> None:
    """``rows_to_json`` converts a page in one pass; every value comes out as
    the row-by-row conversion made it (ids as text first, bytes as base64,
    NaN as null, a driver's row object by its values)."""
    import datetime as dt
    import decimal
    import uuid

    from connector.adapters.sql.models import ServedModel
    from connector.adapters.sql.values import to_json_row

    table = sa.Table(
        "things", sa.MetaData(), sa.Column("key", sa.LargeBinary, primary_key=True),
        *(sa.Column(name, sa.Text) for name in ("at", "amount", "blob", "ratio", "uid", "doc")),
    )  # fmt: skip
    names = ("id", "at", "amount", "blob", "ratio", "uid", "doc")
    served = ServedModel(
        "thing",
        table,
        dict(zip(names, table.columns, strict=True)),
        {column.name: name for name, column in zip(names, table.columns, strict=True)},
    )
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    rows: list[Any] = [
        (b"k1", at, decimal.Decimal("1.50"), b"\x00\xff", float("nan"), uuid.UUID(int=7), {"a": [1, float("inf")]}),
        [7, dt.date(2026, 1, 2), None, None, 2.5, None, [b"x"]],
        ("k3", dt.time(1, 2), decimal.Decimal("-0"), b"", float("-inf"), None, None),
    ]  # fmt: skip
    with sa.create_engine("sqlite://").connect() as connection:
        rows.append(connection.execute(sa.text("SELECT 'k4', 1, 2, 3, 4.5, 'u', 'd'")).one())
    expected = [to_json_row(served.values_to_fields(row)) for row in rows]
    assert served.rows_to_json(rows) == expected
    assert [list(row) for row in served.rows_to_json(rows)] == [list(row) for row in expected]
    assert expected[0]["id"] == "b'k1'" and expected[1]["id"] == "7"
    assert expected[0]["blob"] == "AP8=" and expected[0]["ratio"] is None


# ------------------------------------------------------------ client mistakes and limits

NON_FINITE = {
    # SQLite stores NaN as NULL, so only the infinities reach a row there.
    "sqlite": ("9e999", "-9e999"),
    "postgresql": ("'NaN'", "'Infinity'", "'-Infinity'"),
}


# MySQL and MariaDB refuse NaN and ±Infinity in a DOUBLE: no row of theirs holds one.
@pytest.mark.parametrize("database_url", sorted(NON_FINITE), indirect=True)
async def test_nan_and_infinity_are_served_as_null_and_rows_stay_updatable(
    client: Client, prepared: str
) -> None:
    specials = NON_FINITE[dialect_of(prepared)]
    execute(
        prepared,
        *(
            f"INSERT INTO tasks (id, title, estimate) VALUES ('n{n}', 'odd', {value})"
            for n, value in enumerate(specials)
        ),
    )
    for n in range(len(specials)):
        response = await dispatch_frame(
            client.dispatcher, signed_frame({"type": "load", "model": "task", "id": f"n{n}"})
        )
        assert strict_json_loads(response.body)["row"]["estimate"] is None
    listed = await dispatch_frame(
        client.dispatcher, signed_frame({"type": "list", "model": "task"})
    )
    rows = strict_json_loads(listed.body)["rows"]
    assert [row["estimate"] for row in rows] == [None] * len(specials)
    # Another column of such a row is updated; its outbox event is valid JSON.
    status, body = await client.commit("c_nan", update("n0", title="fixed"))
    assert (status, body["rows"][0]["estimate"]) == (200, None)
    events = await dispatch_frame(client.dispatcher, signed_frame({"type": "events"}))
    assert strict_json_loads(events.body)["events"][0]["data"]["estimate"] is None


def _cursor_of(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _no_sql_in(body: dict[str, Any], *values: str) -> None:
    text = json.dumps(body)
    for leaked in ("SELECT", "INSERT", "UPDATE ", "[SQL", "[parameters", "%(", *values):
        assert leaked not in text, f"{leaked!r} leaked into {text}"


async def test_client_mistakes_are_specific_400s(client: Client, prepared: str) -> None:
    execute(
        prepared,
        "CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER, at TIMESTAMP)",
        "INSERT INTO counters (id, n) VALUES (1, 1)",
    )
    counters = Client(SQLSource(prepared, {"models": {"counter": {"table": "counters"}}}))
    huge = "9999999999999999999"  # past 64 bits
    try:
        cases: list[tuple[Client, dict[str, Any], str]] = [
            (counters, {"type": "load", "model": "counter", "id": huge}, "source_value_invalid"),
            (counters, {"type": "load", "model": "counter", "id": "-" + huge}, "source_value_invalid"),
            (counters, {"type": "list", "model": "counter", "query": {"where": [["n", int(huge)]]}}, "source_value_invalid"),
            (counters, {"type": "commit", "correlationId": "c_big", "operations": [
                {"type": "UPDATE", "model": "counter", "id": "1", "input": {"n": int(huge)}}]}, "source_value_invalid"),
            # Past year 9999 once converted to UTC, for a column without a time zone.
            (counters, {"type": "commit", "correlationId": "c_late", "operations": [
                {"type": "UPDATE", "model": "counter", "id": "1", "input": {"at": "9999-12-31T23:00:00-05:00"}}]}, "source_value_invalid"),
            (counters, {"type": "commit", "correlationId": "c_early", "operations": [
                {"type": "UPDATE", "model": "counter", "id": "1", "input": {"at": "0001-01-01T00:00:00+05:00"}}]}, "source_value_invalid"),
            (client, {"type": "list", "model": "task", "query": {"cursor": _cursor_of(
                '{"v":1,"o":null,"d":false,"k":' + "[" * 1300 + "]" * 1300 + "}")}}, "source_cursor_invalid"),
            (client, {"type": "list", "model": "task", "query": {"cursor": _cursor_of(
                '{"v":1,"o":null,"d":false,"k":[[[1]],"a"]}')}}, "source_cursor_invalid"),
            (client, {"type": "list", "model": "task", "query": {
                "where": [["priority", "!=", n] for n in range(1000)]}}, "source_where_invalid"),
            (client, {"type": "list", "model": "task", "query": {
                "where": [["priority", "IN", list(range(70_000))]]}}, "source_where_invalid"),
            (client, {"type": "events", "cursor": huge}, "source_cursor_invalid"),
            # A pattern too long for SQLite's LIKE, and text no database can store.
            (client, {"type": "list", "model": "task", "query": {
                "where": [["title", "LIKE", "%" * 60_000]]}}, "source_where_invalid"),
            (client, {"type": "list", "model": "task", "query": {
                "where": [["title", "\ud800"]]}}, "source_value_invalid"),
            (client, {"type": "list", "model": "task", "query": {
                "where": [["title", "LIKE", "a\udfffb%"]]}}, "source_value_invalid"),
            (client, {"type": "commit", "correlationId": "c_lone", "operations": [
                {"type": "CREATE", "model": "task", "id": "t9", "input": {"title": "\ud800"}}]},
                "source_value_invalid"),
        ]  # fmt: skip
        for who, request, code in cases:
            status, body = await who(request)
            assert (status, body["error"]) == (400, code), (str(request)[:200], body)
            _no_sql_in(body, huge)
        # None of that is the database's fault: it is still healthy.
        assert client.source.healthy and counters.source.healthy
        # The limits stay within what each database takes: a full IN list works.
        await client.commit("c_in", create("t1", priority=9_999))
        page = await client.list(where=[["priority", "IN", list(range(10_000))]])
        assert [row["id"] for row in page["rows"]] == ["t1"]
        page = await client.list(where=[["priority", "!=", n] for n in range(64)])
        assert [row["id"] for row in page["rows"]] == ["t1"]
    finally:
        await counters.close()


async def test_database_errors_carry_no_sql_or_values(client: Client, prepared: str) -> None:
    secret = "s3cr3t-value-4711"
    execute(
        prepared,
        f"CREATE TABLE codes (id {key_type(prepared)} PRIMARY KEY, "
        "code VARCHAR(3) CHECK (code <> 'bad'))",
    )
    codes = Client(SQLSource(prepared, {"models": {"code": {"table": "codes"}}}))
    try:
        await codes.commit("c_code", {"type": "CREATE", "model": "code", "id": secret, "input": {"code": "ok"}})  # fmt: skip
        failures = [
            {
                "type": "CREATE",
                "model": "code",
                "id": secret,
                "input": {"code": "ok"},
            },  # duplicate key
            {"type": "UPDATE", "model": "code", "id": secret, "input": {"code": "bad"}},  # CHECK
        ]
        if dialect_of(prepared) != "sqlite":
            failures.append(  # too long for VARCHAR(3): SQLite does not enforce it
                {"type": "UPDATE", "model": "code", "id": secret, "input": {"code": secret}}
            )
        for n, operation in enumerate(failures):
            status, body = await codes.commit(f"c_fail_{n}", operation)
            assert status in (400, 409), body
            _no_sql_in(body, secret)
    finally:
        await codes.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("mood", "s3cr3t"),
        ("mood", 's3cr3t"x'),  # a quote inside the value
        ("addr", '10.0.0.1"s3cr3t'),
        ("price", "99999999999999999999s3cr3t"),
        ("price", "99999999999999999999"),  # the value mid-message: out of range
        ("flags", "s3cr3t"),
    ],
)
async def test_postgres_input_errors_do_not_echo_the_value(
    postgres_server: Any, column: str, value: str
) -> None:
    url = prepare(create_database(postgres_server))
    execute(
        url,
        "CREATE TYPE mood AS ENUM ('happy', 'sad')",
        "CREATE TABLE moods (id TEXT PRIMARY KEY, mood mood, addr inet, price money, flags bit(4))",
    )
    client = Client(SQLSource(url, {"models": {"mood": {"table": "moods"}}}))
    try:
        create = {"type": "CREATE", "model": "mood", "id": "m1", "input": {column: value}}
        status, body = await client.commit("c_mood", create)
        assert (status, body["error"]) == (400, "source_value_invalid")
        # The field is named (it was not: an enum label the type lacks said
        # only InvalidTextRepresentation), the value never.
        assert body["message"].startswith(f"field {column!r}: the database refused the request: ")
        assert body["field"] == column
        _no_sql_in(body, value)
        _no_sql_in(body, "s3cr3t")
        assert "99999999999999999999" not in body["message"]
        query = {"where": [["id", "m0"], [column, value]]}
        where = {"type": "list", "model": "mood", "query": query}
        status, body = await client(where)
        assert status == 400 and value not in json.dumps(body) and "s3cr3t" not in json.dumps(body)
        if column in ("mood", "addr"):  # money and bit(4) have no = with text: no value is read
            assert (body["error"], body.get("field")) == ("source_value_invalid", column), body
    finally:
        await client.close()
        drop_database(postgres_server, url)


async def test_a_model_answers_to_its_aliases_and_authorize_sees_its_name(prepared: str) -> None:
    execute(
        prepared, f"CREATE TABLE salaries (id {key_type(prepared)} PRIMARY KEY, amount INTEGER)"
    )
    execute(prepared, "INSERT INTO salaries VALUES ('s1', 100)")

    class Guarded(SQLSource):
        def authorize(self, ctx: RequestContext) -> None:
            if getattr(ctx.request, "model", None) == "Salary":
                raise SourceError("forbidden", "no salaries here", status=403)

    client = Client(Guarded(prepared, {"models": {"Salary": {"table": "salaries"}}}))
    try:
        for name in ("Salary", "salary"):  # an alias never slips past the hook
            status, body = await client({"type": "load", "model": name, "id": "s1"})
            assert (status, body["error"]) == (403, "forbidden"), name
        status, body = await client({"type": "load", "model": "SALARY", "id": "s1"})
        assert (status, body["error"]) == (400, "source_unknown_model"), body
        assert "did you mean 'Salary'" in body["message"]
    finally:
        await client.close()


async def test_a_commit_with_lowercased_model_names_is_served_under_the_map_names(
    prepared: str,
) -> None:
    """The engine's clients send ``model.toLowerCase()``: ``[models.workItems]`` must answer."""
    mapped = {"models": {"workItems": {"table": "tasks", "typename": "WorkItem"}}}
    seen: list[str | None] = []

    class Watched(SQLSource):
        def authorize(self, ctx: RequestContext) -> None:
            seen.append(getattr(ctx.request, "model", None))

    client = Client(Watched(prepared, mapped))
    try:
        operation = {"type": "CREATE", "model": "workitems", "id": "w1", "input": {"title": "a"}}
        status, body = await client.commit("c_lower", operation, model="workitems")
        assert status == 200, body
        assert body["rows"][0]["id"] == "w1"
        for name in ("workItems", "workitems", "WorkItem", "workitem"):
            loaded = await client.ok({"type": "load", "model": name, "id": "w1"})
            assert loaded["row"]["title"] == "a", name
        events = await client.events()
        assert [event["model"] for event in events["events"]] == ["workItems"]
        assert seen == ["workItems"] * 5 + [None]  # the last: events, which names no model
    finally:
        await client.close()


def test_a_map_whose_models_share_a_name_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'Task' and 'task' both answer to 'task'"):
        ModelMap.from_dict({"models": {"Task": {"table": "a"}, "task": {"table": "b"}}})
    with pytest.raises(ConfigError, match=r"'items' and 'item' both answer to 'item'"):
        ModelMap.from_dict({"models": {"items": {"typename": "Item"}, "item": {}}})


# ------------------------------------------------------------ a database that cannot work


async def test_a_database_that_cannot_work_is_a_configuration_error(
    postgres_server: Any, tmp_path: Path
) -> None:
    password = "pw-right-9f2c"
    role = f"r_{uuid.uuid4().hex[:8]}"
    require_password(postgres_server, role, password)
    base = f"127.0.0.1:{postgres_server.port}"
    cases = [
        (f"postgresql://{role}:wrong-pw-3e1d@{base}/postgres", "refused the login of user"),
        (f"postgresql://{role}@{base}/postgres", "refused the login of user"),
        (f"postgresql://nobody_{role}@{base}/postgres", "has no user"),
        (f"postgresql://postgres@{base}/no_such_db", "database 'no_such_db' does not exist"),
        (f"sqlite:///{tmp_path / 'missing.db'}", "does not exist"),
    ]
    for url, message in cases:
        with pytest.raises(ConfigError, match=message) as raised:
            SQLSource(url, MODELS).prepare()
        assert "wrong-pw" not in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "missing.db").exists()  # nothing was created either
    # The right password is served (the ledger is missing: a config error too).
    with pytest.raises(ConfigError, match="no ablo_idempotency table"):
        SQLSource(f"postgresql://{role}:{password}@{base}/postgres", MODELS).prepare()


async def test_an_unreachable_database_is_unhealthy_until_a_probe_succeeds(
    postgres: Any,
) -> None:
    url = prepare(postgres.dsn).replace("postgres@", "postgres:pw-hidden-1b2c@")
    await asyncio.to_thread(postgres.stop, "fast")
    source = SQLSource(url, MODELS)
    try:
        with pytest.raises(sa.exc.OperationalError):
            source.prepare()  # what the CLI does at start: it logs and serves on
        assert source.healthy is False
        assert source.last_error and "pw-hidden" not in source.last_error
        with pytest.raises(SourceError) as unreachable:
            await source.probe()
        assert unreachable.value.code == "database_unreachable"
        assert "pw-hidden" not in unreachable.value.message
        client = Client(source)
        status, body = await client({"type": "load", "model": "task", "id": "t1"})
        assert (status, body["error"]) == (503, "source_database_unavailable")
        await asyncio.to_thread(postgres.start)
        await source.probe()
        assert (source.healthy, source.last_error) == (True, None)
        assert await client.ok({"type": "load", "model": "task", "id": "t1"}) == {"row": None}
        # A request that finds the database gone marks the source unhealthy too.
        await asyncio.to_thread(postgres.stop, "immediate")
        status, _ = await client({"type": "load", "model": "task", "id": "t1"})
        assert status == 503 and source.healthy is False
    finally:
        await source.aclose()


async def test_a_value_too_large_for_an_index_is_the_callers_400(postgres_server: Any) -> None:
    url = prepare(create_database(postgres_server))
    execute(url, "CREATE UNIQUE INDEX tasks_title ON tasks (title)")
    client = Client(SQLSource(url, MODELS))
    try:
        status, body = await client.commit("c_wide", create("t1", title="x" * 300_000))
        assert (status, body["error"]) == (400, "source_value_invalid"), body
        assert "ProgramLimitExceeded" in body["message"] and "xxxx" not in body["message"]
        assert client.source.healthy, "the database is fine; the request was not"
    finally:
        await client.close()
        drop_database(postgres_server, url)


def test_a_table_whose_id_is_only_part_of_its_key_is_not_served(prepared: str) -> None:
    """With a key of (id, tenant), a write by id would change every tenant's
    row: a map naming the table is refused, and without a map it is skipped."""
    key = key_type(prepared)
    execute(
        prepared,
        f"CREATE TABLE tenants (id INTEGER, tenant {key}, name TEXT, PRIMARY KEY (id, tenant))",
        f"CREATE TABLE tenants_keyed (id INTEGER, tenant {key}, PRIMARY KEY (id, tenant))",
        "CREATE UNIQUE INDEX tenants_keyed_id ON tenants_keyed (id)",
    )
    with pytest.raises(
        ConfigError, match="column 'id', served as field 'id', is not unique on its own"
    ):
        SQLSource(prepared, {"models": {"tenants": {"table": "tenants"}}}).prepare()
    # A unique index on the id alone makes it a key, whatever the primary key holds.
    assert list(SQLSource(prepared, {"models": {"t": {"table": "tenants_keyed"}}}).prepare())
    # The application's word for it (a partitioned table cannot have such an index).
    trusted = {"models": {"tenants": {"table": "tenants", "id_unique": True}}}
    assert list(SQLSource(prepared, trusted).prepare()) == ["tenants"]
    if dialect_of(prepared) != "mysql":  # MySQL has no partial index
        # Unique only where deleted is null: the other rows may share an id.
        execute(
            prepared,
            "ALTER TABLE tenants ADD COLUMN deleted INTEGER",
            "CREATE UNIQUE INDEX tenants_live_id ON tenants (id) WHERE deleted IS NULL",
        )
        with pytest.raises(ConfigError, match="is not unique on its own"):
            SQLSource(prepared, {"models": {"tenants": {"table": "tenants"}}}).prepare()
    served = SQLSource(prepared).prepare()
    assert "tenants" not in served and {"tasks", "tenants_keyed"} <= set(served)


async def test_a_single_precision_float_pages_and_filters_by_the_values_it_serves(
    prepared: str,
) -> None:
    """PostgreSQL's real and MySQL's FLOAT hold 0.1 as 0.1f, which the database
    compares widened to double: bound as the 0.1 a row serves, `=` found
    nothing and a cursor after that row found it again, page after page."""
    single = {"sqlite": "REAL", "postgresql": "REAL", "mysql": "FLOAT"}[dialect_of(prepared)]
    execute(
        prepared,
        f"CREATE TABLE measures (id {key_type(prepared)} PRIMARY KEY, v {single})",
        "INSERT INTO measures VALUES ('a', 0.1), ('b', 0.1), ('c', 0.2), ('d', NULL)",
    )
    client = Client(SQLSource(prepared, {"models": {"m": {"table": "measures"}}}))
    try:

        async def every_page(**query: Any) -> list[str]:
            ids: list[str] = []
            while len(ids) < 10:
                page = await client.ok(
                    {"type": "list", "model": "m", "query": {**query, "limit": 1}}
                )
                ids += [row["id"] for row in page["rows"]]
                if not page.get("nextCursor"):
                    return ids
                query["cursor"] = page["nextCursor"]
            return ids

        assert await every_page(orderBy="v") == ["a", "b", "c", "d"]
        assert await every_page(orderBy="v", order="desc") == ["c", "b", "a", "d"]
        served = (await client.load("m", "a"))["v"]

        async def where(op: str, value: Any) -> list[str]:
            query = {"where": [["v", op, value]], "orderBy": "id"}
            page = await client.ok({"type": "list", "model": "m", "query": query})
            return [row["id"] for row in page["rows"]]

        assert await where("=", served) == ["a", "b"]
        assert await where(">", served) == ["c"]
        assert await where("IN", [served, 0.2]) == ["a", "b", "c"]
        status, answer = await client(
            {"type": "list", "model": "m", "query": {"where": [["v", "=", 1e39]]}}
        )
        expected = 200 if dialect_of(prepared) == "sqlite" else 400  # SQLite's REAL is a double
        assert status == expected, answer
    finally:
        await client.close()


async def test_lists_refuse_what_a_column_cannot_do_with_a_400(prepared: str) -> None:
    """A pattern on a boolean, an order by a document: the caller's mistake,
    told as such, not a 500 from the driver or pages that repeat rows."""
    document = {"sqlite": "JSON", "postgresql": "JSONB", "mysql": "JSON"}[dialect_of(prepared)]
    execute(prepared, f"ALTER TABLE tasks ADD COLUMN meta {document}")
    unordered = ["meta"]
    if dialect_of(prepared) == "postgresql":
        execute(prepared, "ALTER TABLE tasks ADD COLUMN span int4range, ADD COLUMN tags text[]")
        unordered += ["span", "tags"]
    elif dialect_of(prepared) == "mysql":
        # Sorted by member order, compared as text; a SET is served as a list.
        execute(
            prepared,
            "ALTER TABLE tasks ADD COLUMN mood ENUM('sad', 'ok'), ADD COLUMN tags SET('x', 'y')",
        )
        unordered += ["mood", "tags"]
    client = Client(SQLSource(prepared, MODELS))
    try:
        for field in ("done", "priority", "dueAt"):
            status, answer = await client(
                {"type": "list", "model": "task", "query": {"where": [[field, "LIKE", "t%"]]}}
            )
            assert (status, answer["error"]) == (400, "source_where_invalid"), answer
            assert "text fields only" in answer["message"]
        for field in unordered:
            status, answer = await client(
                {"type": "list", "model": "task", "query": {"orderBy": field}}
            )
            assert (status, answer["error"]) == (400, "source_query_invalid"), answer
            assert f"cannot order model 'task' by field {field!r}" in answer["message"]
        assert (await client.list(where=[["title", "LIKE", "%"]], orderBy="dueAt"))["rows"] == []
    finally:
        await client.close()


async def test_bytes_a_row_serves_can_be_written_back_and_filtered_on(prepared: str) -> None:
    """Rows serve bytes in base64's URL-safe alphabet; a write or a filter
    read only the standard one, so a value with - or _ in it was refused."""
    binary = {"sqlite": "BLOB", "postgresql": "BYTEA", "mysql": "VARBINARY(16)"}
    dialect = dialect_of(prepared)
    execute(
        prepared,
        f"CREATE TABLE blobs (id {key_type(prepared)} PRIMARY KEY, b {binary[dialect]})",
        "INSERT INTO blobs VALUES ('a', "
        + ("'\\xfbff'" if dialect == "postgresql" else "X'fbff'")
        + ")",
    )
    client = Client(SQLSource(prepared, {"models": {"blob": {"table": "blobs"}}}))
    try:
        served = (await client.load("blob", "a"))["b"]
        assert served == "-_8="
        status, answer = await client.commit(
            "c_bytes", {"type": "UPDATE", "model": "blob", "id": "a", "input": {"b": served}}
        )
        assert (status, answer["rows"]) == (200, [{"id": "a", "b": served}]), answer
        assert bytes(scalar(prepared, "SELECT b FROM blobs")) == b"\xfb\xff"
        for value in (served, "+/8="):  # the standard alphabet is read as well
            query = {"where": [["b", "=", value]]}
            page = await client.ok({"type": "list", "model": "blob", "query": query})
            assert [row["id"] for row in page["rows"]] == ["a"]
    finally:
        await client.close()
