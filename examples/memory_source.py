"""The smallest useful Data Source: rows in a dict, served by the connector.

ablo-connector run --handler examples.memory_source:MemorySource ...
"""

from __future__ import annotations

import itertools
import json
import time
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


class MemorySource(DataSource):
    """Keeps rows in memory; idempotent commits keyed on ``correlation_id``."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.commits: dict[str, tuple[str, CommitResult]] = {}
        self.outbox: list[Event] = []
        self._event_ids = itertools.count(1)

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        return self.rows.get((model, id))

    async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:
        rows = [row for (m, _), row in self.rows.items() if m == model]
        for condition in query.where:
            if condition.op != "=":
                raise SourceError(
                    "unsupported_operator", f"only '=' is supported, not {condition.op}"
                )
            rows = [row for row in rows if row.get(condition.field) == condition.value]
        order_by, descending = query.order_by or "id", query.order == "desc"
        rows.sort(key=lambda row: _position(row, order_by), reverse=descending)
        rows.sort(key=lambda row: row.get(order_by) is None)  # stable: nulls last either way
        if query.cursor:
            # A keyset cursor, the position of the last row served: a row inserted
            # before it while someone pages cannot shift the next page (an offset would).
            last = tuple(json.loads(query.cursor))
            rows = [row for row in rows if _comes_after(_position(row, order_by), last, descending)]
        limit = query.limit or 100
        page = rows[:limit]
        more = len(rows) > limit
        cursor = json.dumps(_position(page[-1], order_by)) if more else None
        return ListPage(rows=page, next_cursor=cursor)

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        key = commit.correlation_id or ""
        intent = commit.effective_intent_hash
        if key in self.commits:
            seen_intent, result = self.commits[key]
            if seen_intent != intent:
                raise SourceError(
                    "idempotency_conflict", "correlationId reused with another intent", status=409
                )
            return result
        # All or nothing: refuse the commit before applying any of its operations.
        if not all(op.id for op in commit.operations):
            raise SourceError("source_commit_invalid", "every operation needs an id")
        changed = []
        for op in commit.operations:
            assert op.id is not None
            row_key = (op.model, op.id)
            if op.type == "DELETE":
                self.rows.pop(row_key, None)
                row: dict[str, Any] = {"id": op.id}
            else:
                row = {**self.rows.get(row_key, {}), **(op.input or {}), "id": op.id}
                if op.type in ("ARCHIVE", "UNARCHIVE"):
                    # As the SQL adapter does: epoch milliseconds, or null once unarchived.
                    row["archivedAt"] = int(time.time() * 1000) if op.type == "ARCHIVE" else None
                self.rows[row_key] = row
            changed.append(row)
            self.outbox.append(
                Event(
                    id=f"evt_{next(self._event_ids)}",
                    model=op.model,
                    entity_id=op.id,
                    type=op.type,
                    data=None if op.type == "DELETE" else row,
                    correlation_id=key,
                    transaction_id=op.transaction_id,
                )
            )
        result = CommitResult(rows=changed)
        self.commits[key] = (intent, result)
        return result

    async def events(
        self, cursor: str | None, limit: int | None, ctx: RequestContext
    ) -> EventsPage:
        start = int(cursor or 0)
        count = limit or 100
        page = self.outbox[start : start + count]
        # Always hand back the position, so the next poll resumes after this page.
        return EventsPage(events=page, next_cursor=str(start + len(page)))


def _position(row: dict[str, Any], order_by: str) -> tuple[bool, Any, str]:
    """Where a row sorts: nulls last, then by the field, then by id."""
    value = row.get(order_by)
    return (value is None, value, row["id"])


def _comes_after(position: tuple[Any, ...], last: tuple[Any, ...], descending: bool) -> bool:
    if position[0] != last[0]:
        return bool(position[0])  # nulls come last, in either order
    for mine, theirs in zip(position[1:], last[1:], strict=True):
        if mine != theirs:
            return bool(mine < theirs if descending else mine > theirs)
    return False
