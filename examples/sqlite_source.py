"""A Data Source backed by SQLite (standard library only).

Rows of every model live as JSON documents in one table, so the example
works for any model name. Commits are atomic and idempotent on
``correlationId`` (the ``ablo_idempotency`` ledger), and every change is
recorded in a transactional outbox (``ablo_outbox``) that ``events`` pages.

    ablo-connector run --handler examples.sqlite_source:SQLiteSource ...

The database file is ``$ABLO_EXAMPLE_DB`` (default ``./ablo-example.db``);
its tables are created, and two sample tasks added, on first use. The
methods are plain ``def``: the connector runs them in worker threads.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from connector import (
    CommitRequest,
    CommitResult,
    DataSource,
    Event,
    EventsPage,
    ListPage,
    ListQuery,
    RequestContext,
    SourceError,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    model      TEXT NOT NULL,
    id         TEXT NOT NULL,
    data       TEXT NOT NULL,
    archived   INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (model, id)
);
CREATE TABLE IF NOT EXISTS ablo_idempotency (
    client_tx_id TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    response     TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ablo_outbox (
    cursor         INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    model          TEXT NOT NULL,
    entity_id      TEXT NOT NULL,
    type           TEXT NOT NULL,
    data           TEXT,
    correlation_id TEXT,
    transaction_id TEXT,
    occurred_at    INTEGER NOT NULL
);
"""

SAMPLE_TASKS = [
    {"id": "t1", "title": "Try ablo-connector", "done": False, "priority": 2},
    {"id": "t2", "title": "Read the README", "done": True, "priority": 1},
]

# Comparison operators this example maps to SQL; LIKE-family and IN are left
# to the SQL adapter.
_OPERATORS = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class SQLiteSource(DataSource):
    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.environ.get("ABLO_EXAMPLE_DB", "ablo-example.db")
        self._local = threading.local()
        self._db().executescript(SCHEMA)
        with self._transaction() as db:
            if db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0:
                now = _now_ms()
                db.executemany(
                    "INSERT INTO records (model, id, data, updated_at) VALUES ('task', ?, ?, ?)",
                    [(task["id"], json.dumps(task), now) for task in SAMPLE_TASKS],
                )

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # One connection per worker thread; autocommit, transactions explicit.
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        found = (
            self._db()
            .execute("SELECT data FROM records WHERE model = ? AND id = ?", (model, id))
            .fetchone()
        )
        return None if found is None else json.loads(found[0])

    def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:
        clauses: list[str] = ["model = ?"]
        params: list[Any] = [model]
        for condition in query.where:
            op = _OPERATORS.get(condition.op)
            if op is None or isinstance(condition.value, list):
                raise SourceError(
                    "unsupported_operator", f"the SQLite example does not support {condition.op}"
                )
            value = condition.value
            # As the engine evaluates a condition: = null means IS NULL, and a null
            # is not equal to any value given (SQL alone would match no row for either).
            if value is None and op in ("=", "!="):
                clauses.append(f"json_extract(data, ?) IS {'' if op == '=' else 'NOT '}NULL")
                params.append(_json_path(condition.field))
                continue
            if op == "!=":
                clauses.append("(json_extract(data, ?) != ? OR json_extract(data, ?) IS NULL)")
            else:
                clauses.append(f"json_extract(data, ?) {op} ?")
            params += [
                _json_path(condition.field),
                int(value) if isinstance(value, bool) else value,
            ]
            if op == "!=":
                params.append(_json_path(condition.field))
        # Sorted by the field (nulls last), then by id; the cursor is the last row's
        # position in that order (a keyset), so rows inserted while someone pages
        # never shift a page the way an offset would.
        descending = query.order == "desc"
        direction, beyond = ("DESC", "<") if descending else ("ASC", ">")
        sort = "json_extract(data, ?)" if query.order_by else "NULL"
        sort_params = [_json_path(query.order_by)] if query.order_by else []
        if query.cursor:
            try:
                value, last_id = json.loads(query.cursor)
            except (ValueError, TypeError):
                raise SourceError(
                    "source_cursor_invalid", "not a cursor this source issued"
                ) from None
            if value is None:
                clauses.append(f"({sort} IS NULL AND id {beyond} ?)")
                params += [*sort_params, last_id]
            else:
                clauses.append(
                    f"({sort} {beyond} ? OR ({sort} = ? AND id {beyond} ?) OR {sort} IS NULL)"
                )
                params += [*sort_params, value, *sort_params, value, last_id, *sort_params]
        limit = min(query.limit or 100, 1000)
        found = (
            self._db()
            .execute(
                f"SELECT data, {sort} FROM records WHERE {' AND '.join(clauses)} "
                f"ORDER BY {sort} IS NULL, {sort} {direction}, id {direction} LIMIT ?",
                (*sort_params, *params, *sort_params, *sort_params, limit + 1),
            )
            .fetchall()
        )
        rows = [json.loads(r[0]) for r in found[:limit]]
        more = len(found) > limit
        return ListPage(
            rows=rows,
            next_cursor=json.dumps([found[limit - 1][1], rows[-1]["id"]]) if more else None,
        )

    def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        key = commit.correlation_id or ""
        intent = commit.effective_intent_hash
        with self._transaction() as db:
            seen = db.execute(
                "SELECT request_hash, response FROM ablo_idempotency WHERE client_tx_id = ?", (key,)
            ).fetchone()
            if seen is not None:
                if seen[0] != intent:
                    raise SourceError(
                        "idempotency_conflict",
                        "correlationId was already used with another intent",
                        status=409,
                    )
                return CommitResult(rows=json.loads(seen[1]))
            if commit.echo is not None:
                raise SourceError(
                    "source_commit_echo_not_supported",
                    "SQLite cannot emit a Postgres WAL echo",
                    status=409,
                )
            rows = [self._apply(db, op, key) for op in commit.operations]
            db.execute(
                "INSERT INTO ablo_idempotency (client_tx_id, request_hash, response, created_at) VALUES (?, ?, ?, ?)",
                (key, intent, json.dumps(rows), _now_ms()),
            )
        return CommitResult(rows=rows)

    def _apply(self, db: sqlite3.Connection, op: Any, correlation_id: str) -> dict[str, Any]:
        if not op.id:
            raise SourceError("source_commit_invalid", f"{op.type} on {op.model} needs an id")
        found = db.execute(
            "SELECT data FROM records WHERE model = ? AND id = ?", (op.model, op.id)
        ).fetchone()
        current = None if found is None else json.loads(found[0])
        if op.type == "CREATE" and current is not None:
            raise SourceError("source_row_exists", f"{op.model} {op.id} already exists", status=409)
        if op.type != "CREATE" and current is None:
            raise SourceError(
                "source_row_not_found", f"{op.model} {op.id} does not exist", status=404
            )
        now = _now_ms()
        if op.type == "DELETE":
            db.execute("DELETE FROM records WHERE model = ? AND id = ?", (op.model, op.id))
            row: dict[str, Any] = {"id": op.id}
        else:
            row = {**(current or {}), **(op.input or {}), "id": op.id}
            archived = {"ARCHIVE": 1, "UNARCHIVE": 0}.get(op.type)
            if archived is not None:
                row["archivedAt"] = now if archived else None
            db.execute(
                "INSERT INTO records (model, id, data, archived, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (model, id) DO UPDATE SET data = excluded.data, "
                "archived = COALESCE(?, archived), updated_at = excluded.updated_at",
                (op.model, op.id, json.dumps(row), archived or 0, now, archived),
            )
        db.execute(
            "INSERT INTO ablo_outbox (id, model, entity_id, type, data, correlation_id, transaction_id, occurred_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                f"evt_{uuid.uuid4().hex}",
                op.model,
                op.id,
                op.type,
                None if op.type == "DELETE" else json.dumps(row),
                correlation_id,
                op.transaction_id,
                now,
            ),
        )
        return row

    def events(self, cursor: str | None, limit: int | None, ctx: RequestContext) -> EventsPage:
        after = int(cursor) if cursor and cursor.isdigit() else 0
        count = min(limit or 100, 1000)
        found = (
            self._db()
            .execute(
                "SELECT cursor, id, model, entity_id, type, data, correlation_id, transaction_id, occurred_at "
                "FROM ablo_outbox WHERE cursor > ? ORDER BY cursor LIMIT ?",
                (after, count + 1),
            )
            .fetchall()
        )
        page = found[:count]
        events = [
            Event(
                id=r[1],
                model=r[2],
                entity_id=r[3],
                type=r[4],
                data=None if r[5] is None else json.loads(r[5]),
                correlation_id=r[6],
                transaction_id=r[7],
                occurred_at=r[8],
            )
            for r in page
        ]
        last = page[-1][0] if page else after
        return EventsPage(events=events, next_cursor=str(last))


def _json_path(field: str) -> str:
    # Quoted member access, so a field name is always data, never path syntax.
    return "$." + json.dumps(field)


def _now_ms() -> int:
    return int(time.time() * 1000)
