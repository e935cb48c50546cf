"""A Data Source over an application's own table, whose every write reaches Ablo.

The application owns a ``notes`` table and writes it all day without this
handler (its web handlers, an admin page, ``psql``). Capture triggers
(``connector.adapters.sql.capture.table_capture_statements``, the same DDL
``ablo-connector migrate --capture`` installs) make the database record each
of those writes in ``ablo_outbox``, in the writer's own transaction; this
handler's ``events`` pages that outbox. Its own commits write their events
themselves, with their ``correlationId``, inside ``own_events`` so that the
triggers leave those rows to it: every change is recorded once.

    ABLO_EXAMPLE_DATABASE_URL=sqlite:///notes.db \\
        ablo-connector run --handler examples.captured_notes_source:NotesSource ...

The URL may name SQLite or PostgreSQL. On first use the handler creates the
table, the ledger and the outbox (``migrate``) and installs the capture; it
serves one model, ``note`` (``id``, ``body``, ``pinned``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa

from connector import (
    CommitRequest,
    CommitResult,
    DataSource,
    Event,
    EventsPage,
    RequestContext,
    SourceError,
)
from connector.adapters.sql import create_database_engine, migrate
from connector.adapters.sql.capture import (
    captured_row,
    own_events,
    remove_table_capture_statements,
    table_capture_statements,
    write_own_events,
)

MODEL = "note"
FIELDS = ("id", "body", "pinned")

notes = sa.table("notes", sa.column("id"), sa.column("body"), sa.column("pinned"))
ledger = sa.table(
    "ablo_idempotency",
    sa.column("client_tx_id"),
    sa.column("request_hash"),
    sa.column("response", sa.JSON),
)
outbox = sa.table(
    "ablo_outbox",
    sa.column("cursor"),
    sa.column("id"),
    sa.column("model"),
    sa.column("entity_id"),
    sa.column("type"),
    sa.column("data", sa.JSON),
    sa.column("correlation_id"),
    sa.column("transaction_id"),
    sa.column("occurred_at"),
)


def as_note(row: dict[str, Any]) -> dict[str, Any]:
    """A note as the engine sees it, from the table's columns (SQLite keeps a boolean as 0/1)."""
    return {"id": row["id"], "body": row["body"], "pinned": bool(row["pinned"])}


class NotesSource(DataSource):
    def __init__(self, url: str | None = None) -> None:
        self.engine = create_database_engine(
            url or os.environ.get("ABLO_EXAMPLE_DATABASE_URL", "sqlite:///notes.db")
        )
        migrate(self.engine)  # ablo_idempotency and ablo_outbox
        with self.engine.begin() as connection:
            connection.exec_driver_sql(
                "CREATE TABLE IF NOT EXISTS notes "
                "(id TEXT PRIMARY KEY, body TEXT NOT NULL, pinned BOOLEAN NOT NULL DEFAULT FALSE)"
            )
            # Dropped and installed again in one transaction: safe to repeat.
            for statement in remove_table_capture_statements(
                connection, "notes", model=MODEL
            ) + table_capture_statements(connection, "notes", model=MODEL, columns=FIELDS):
                connection.exec_driver_sql(statement)

    def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            found = connection.execute(sa.select(notes).where(notes.c.id == id)).mappings().first()
        return None if found is None else as_note(dict(found))

    def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        key = commit.correlation_id
        if key is None:
            raise SourceError("source_commit_requires_correlation_id", "a commit needs one")
        intent = commit.effective_intent_hash
        try:
            with self.engine.begin() as connection:
                # The ledger row first: a second commit of the same key waits here.
                connection.execute(
                    ledger.insert().values(client_tx_id=key, request_hash=intent, response=[])
                )
                rows = self._apply(connection, commit)
                connection.execute(
                    ledger.update().where(ledger.c.client_tx_id == key).values(response=rows)
                )
        except sa.exc.IntegrityError:
            return self._replay(key, intent)
        return CommitResult(rows=rows)

    def _replay(self, key: str, intent: str | None) -> CommitResult:
        """A commit whose key is in the ledger: its first answer, or a refusal."""
        with self.engine.connect() as connection:
            first = connection.execute(
                sa.select(ledger.c.request_hash, ledger.c.response).where(
                    ledger.c.client_tx_id == key
                )
            ).first()
        if first is None:  # no replay: the commit broke a constraint of the table
            raise SourceError("source_constraint_violation", "a row conflicts", status=409)
        if first.request_hash != intent:
            raise SourceError(
                "idempotency_conflict", "correlationId reused with another intent", status=409
            )
        return CommitResult(rows=first.response)

    def _apply(self, connection: sa.Connection, commit: CommitRequest) -> list[Any]:
        key = commit.correlation_id
        rows: list[Any] = []
        events: list[dict[str, Any]] = []
        ids = [op.id or str((op.input or {}).get("id")) for op in commit.operations]
        # Inside, the triggers leave these rows to this commit, which records them below.
        with own_events(connection, [(MODEL, id) for id in ids]):
            for index, (op, id) in enumerate(zip(commit.operations, ids, strict=True)):
                if op.model != MODEL or op.type not in ("CREATE", "UPDATE", "DELETE"):
                    raise SourceError("source_operation_invalid", f"{op.type} {op.model}")
                values = {k: v for k, v in (op.input or {}).items() if k in FIELDS and k != "id"}
                if op.type == "CREATE":
                    connection.execute(notes.insert().values(id=id, **values))
                elif op.type == "UPDATE" and values:
                    connection.execute(notes.update().where(notes.c.id == id).values(**values))
                elif op.type == "DELETE":
                    connection.execute(notes.delete().where(notes.c.id == id))
                found = (
                    connection.execute(sa.select(notes).where(notes.c.id == id)).mappings().first()
                )
                row = None if found is None else as_note(dict(found))
                rows.append(row)
                if row is None and op.type != "DELETE":
                    continue  # an UPDATE of a row that is not there changed nothing
                events.append(
                    {
                        "id": f"{key}:{index}",
                        "model": MODEL,
                        "entity_id": id,
                        "type": op.type,
                        "data": row,
                        "correlation_id": key,
                        "transaction_id": op.transaction_id,
                        "occurred_at": int(time.time() * 1000),
                    }
                )
        write_own_events(connection, events)
        return rows

    def events(self, cursor: str | None, limit: int | None, ctx: RequestContext) -> EventsPage:
        try:
            after = int(cursor or 0)
        except ValueError:
            raise SourceError("source_cursor_invalid", "not a cursor this source issued") from None
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(outbox)
                .where(outbox.c.cursor > after)
                .order_by(outbox.c.cursor)
                .limit(min(limit or 100, 1000))
            ).mappings()
            events = []
            for row in found:
                captured = captured_row(row["data"])
                data = as_note(captured) if captured is not None else row["data"]
                events.append(
                    Event(
                        id=row["id"],
                        model=row["model"],
                        entity_id=row["entity_id"],
                        type=row["type"],
                        data=None if row["type"] == "DELETE" else data,
                        correlation_id=row["correlation_id"],
                        transaction_id=row["transaction_id"],
                        occurred_at=row["occurred_at"],
                    )
                )
                after = row["cursor"]
        return EventsPage(events=events, next_cursor=str(after) if events else cursor)
