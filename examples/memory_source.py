"""The smallest useful Data Source: rows in a dict, served by the connector.

ablo-connector run --handler examples.memory_source:MemorySource ...
"""

from __future__ import annotations

import itertools
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
        rows = [row for (m, _), row in sorted(self.rows.items()) if m == model]
        for condition in query.where:
            if condition.op != "=":
                raise SourceError(
                    "unsupported_operator", f"only '=' is supported, not {condition.op}"
                )
            rows = [row for row in rows if row.get(condition.field) == condition.value]
        start = int(query.cursor or 0)
        limit = query.limit or 100
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return ListPage(rows=page, next_cursor=str(start + limit) if more else None)

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
        changed = []
        for op in commit.operations:
            if not op.id:
                raise SourceError("source_commit_invalid", "every operation needs an id")
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
