"""Handlers that each break exactly one guarantee, for the tests of ``verify``.

Each is the example :class:`MemorySource` with one mistake a handler
author could make; ``BROKEN`` maps each to the one check that must fail.
"""

from __future__ import annotations

import asyncio
from typing import Any

from connector import CommitRequest, CommitResult, EventsPage, RequestContext, SourceError
from examples.memory_source import MemorySource


class ReplaysTwice(MemorySource):
    """Answers a replay with the first answer, but writes its rows again first
    (as a handler does that applies the operations before consulting its ledger)."""

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        seen = self.commits.get(commit.correlation_id or "")
        if seen is not None and seen[0] == commit.effective_intent_hash:
            for op in commit.operations:
                if op.id and op.type != "DELETE":
                    key = (op.model, op.id)
                    self.rows[key] = {**self.rows.get(key, {}), **(op.input or {}), "id": op.id}
        return await super().commit(commit, ctx)


class IgnoresIntent(MemorySource):
    """Answers a repeated correlationId with the first answer, whatever its intent."""

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        seen = self.commits.get(commit.correlation_id or "")
        if seen is not None:
            return seen[1]
        return await super().commit(commit, ctx)


class AppliesConcurrentTwice(MemorySource):
    """Looks up the correlationId, waits (a round trip to a database, say), then
    applies: copies that arrive in between all apply, each with its own event."""

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        key = commit.correlation_id or ""
        if key in self.commits:
            return await super().commit(commit, ctx)
        await asyncio.sleep(0.05)
        self.commits.pop(key, None)  # what it looked up is stale: a copy finished meanwhile
        return await super().commit(commit, ctx)


class RedeliversPage(MemorySource):
    """After a full page, hands back the position of that page's last event instead
    of the one after it, so the next page delivers that event again."""

    async def events(
        self, cursor: str | None, limit: int | None, ctx: RequestContext
    ) -> EventsPage:
        page = await super().events(cursor, limit, ctx)
        if page.events and len(page.events) == (limit or 100) and page.next_cursor:
            return EventsPage(events=page.events, next_cursor=str(int(page.next_cursor) - 1))
        return page


class SkipsEvent(MemorySource):
    """After a full page, hands back a position one too far: the next event is never sent."""

    async def events(
        self, cursor: str | None, limit: int | None, ctx: RequestContext
    ) -> EventsPage:
        page = await super().events(cursor, limit, ctx)
        if page.events and len(page.events) == (limit or 100) and page.next_cursor:
            return EventsPage(events=page.events, next_cursor=str(int(page.next_cursor) + 1))
        return page


class MissingRowIsError(MemorySource):
    """Answers a load of a row that does not exist with 404 instead of null."""

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        row = await super().load(model, id, ctx)
        if row is None:
            raise SourceError("not_found", f"no {model} {id}", status=404)
        return row


class SlowMissingRow(MemorySource):
    """Takes 2 s to find that a row is missing (a scan where an index was needed)."""

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        row = await super().load(model, id, ctx)
        if row is None:
            await asyncio.sleep(2)
        return row


class CaseSensitiveModels(MemorySource):
    """Serves ``workItems`` without declaring it: a commit for ``workitems``, as the
    engine's clients send it, lands under another name."""


#: Each broken handler, and the one check it must fail.
BROKEN: dict[type[MemorySource], str] = {
    ReplaysTwice: "replay-returns-first-answer",
    IgnoresIntent: "replay-other-intent-refused",
    AppliesConcurrentTwice: "concurrent-duplicates-apply-once",
    RedeliversPage: "events-cursor-advances",
    SkipsEvent: "events-in-commit-order",
    MissingRowIsError: "load-missing-is-null",
    CaseSensitiveModels: "commit-model-lowercased",
}
