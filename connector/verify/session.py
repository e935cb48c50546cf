"""How does a check talk to the source? As the engine does, over the real wire.

A :class:`Session` sends request bodies through the local engine
(:class:`~connector.dev.engine.DevEngine`), which signs them and sends them
over the WebSocket to a :class:`~connector.Connector` serving the source:
the path a production request takes, dispatcher and replay handling
included. Every request is a new delivery (its own ``webhook-id``), as the
engine's retry after a connector restart is: the connector's replay memory
never answers for the handler.

It also keeps what the run wrote (ids, with the model and scope they were written
under) so the runner can delete them, and every answer with its time, for
the deadline check.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ..wire.bodies import Operation, operations_intent_hash
from .plan import FieldSpec, Plan, sample_value

if TYPE_CHECKING:
    from ..dev.engine import DevEngine

__all__ = [
    "FeedWalk",
    "Inconclusive",
    "ListWalk",
    "NotServed",
    "Reply",
    "Session",
    "Violation",
    "describe",
    "mismatches",
    "shorten",
]

#: Rows and events the kit reads while looking for its own, at most.
MAX_SCANNED: Final = 20_000

_UNSET: Final[Any] = object()


class Violation(Exception):
    """A check found the source breaking its guarantee: what was sent, what came back,
    what the engine expects, and (when the kit can tell) what to change."""

    def __init__(self, sent: str, got: str, expected: str, fix: str | None = None) -> None:
        super().__init__(expected)
        self.sent = sent
        self.got = got
        self.expected = expected
        self.fix = fix


class NotServed(Exception):
    """The source answered ``source_<operation>_not_configured``: it does not serve it."""

    def __init__(self, operation: str) -> None:
        super().__init__(operation)
        self.operation = operation


class Inconclusive(Exception):
    """The check could not decide (too many rows of others to look through)."""


def shorten(value: Any, limit: int = 160) -> str:
    """A value as JSON, cut to ``limit`` characters with the size of what was cut."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer, as the engine got it."""

    sent: Mapping[str, Any]
    status: int
    text: str
    seconds: float

    @property
    def body(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str | None:
        body = self.body
        code = body.get("error") if isinstance(body, dict) else None
        return code if isinstance(code, str) else None

    def shown(self, limit: int = 240) -> str:
        return f"HTTP {self.status} {shorten(self.text, limit)}"


@dataclass(slots=True)
class ListWalk:
    """Every page of one list query, followed through ``nextCursor``."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    pages: list[Reply] = field(default_factory=list)
    #: False when the walk stopped at the kit's bound, not at the last page.
    complete: bool = True

    @property
    def refusal(self) -> Reply | None:
        """The page the source refused (the walk ends there), if one was."""
        return self.pages[-1] if self.pages and not self.pages[-1].ok else None


@dataclass(slots=True)
class FeedWalk:
    """Pages of the events feed read one after another from a cursor."""

    events: list[dict[str, Any]] = field(default_factory=list)
    pages: list[Reply] = field(default_factory=list)
    #: (page number, event id) for each event a page delivered again.
    repeats: list[tuple[int, str]] = field(default_factory=list)
    #: The position to resume from: the last nextCursor handed back.
    cursor: str | None = None
    #: Whether the walk ended on a page that brought nothing new.
    drained: bool = False
    #: Whether that last page carried a nextCursor.
    drained_with_cursor: bool = False

    def unique(self) -> list[dict[str, Any]]:
        seen: set[Any] = set()
        events = []
        for event in self.events:
            if event.get("id") not in seen:
                seen.add(event.get("id"))
                events.append(event)
        return events


class Session:
    """The kit's side of one run: requests through the engine, and what it wrote."""

    def __init__(
        self, engine: DevEngine, plan: Plan, served: Iterable[str], deadline: float
    ) -> None:
        self.engine = engine
        #: The connector's --request-timeout: an answer after it is late.
        self.deadline = deadline
        self.plan = plan
        self.model = plan.model
        self.served = frozenset(served)
        self.replies: list[Reply] = []
        #: id → the model and scope (None: none) it was written under, for the clean-up.
        self.written: dict[str, tuple[str, Mapping[str, Any] | None]] = {}
        self._numbers = itertools.count(1)

    # ------------------------------------------------------------ names

    def new_id(
        self,
        tag: str,
        *,
        write: bool = True,
        scope: Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> str:
        """A new id of this run; unless ``write`` is false, the clean-up deletes it."""
        row_id = f"{self.plan.prefix}{tag}-{next(self._numbers)}"
        if write:
            self.written[row_id] = (model or self.model, scope)
        return row_id

    def text(self, tag: str) -> str:
        """A text value of this run, new at each call: the prefix, ``tag``, a number."""
        return f"{self.plan.prefix}{tag}-{next(self._numbers)}"

    def integer(self, offset: int) -> int:
        return self.plan.integer_base + offset

    def correlation(self, tag: str) -> str:
        return f"{self.plan.prefix}{tag}-{next(self._numbers)}"

    def values(self, text: str, integer: Any = _UNSET) -> dict[str, Any]:
        """A row's input: the text field, the integer field when given (``None`` writes
        null) and the model has one, and every other field a row needs."""
        values: dict[str, Any] = {self.plan.text.name: text}
        if self.plan.integer is not None and integer is not _UNSET:
            values[self.plan.integer.name] = integer
        for spec in self.plan.others:  # a new number for each row: some columns are unique
            values[spec.name] = sample_value(spec, next(self._numbers))
        return values

    # ------------------------------------------------------------ requests

    async def send(self, body: Mapping[str, Any]) -> Reply:
        started = time.monotonic()
        result = await self.engine.request(dict(body))
        reply = Reply(body, result.status, result.body, time.monotonic() - started)
        self.replies.append(reply)
        operation = str(body.get("type"))
        if reply.status == 404 and reply.error == f"source_{operation}_not_configured":
            raise NotServed(operation)
        return reply

    async def send_all(self, bodies: Sequence[Mapping[str, Any]]) -> list[Reply]:
        """Send every body at once, each its own delivery: they reach the source concurrently."""
        return list(await asyncio.gather(*(self.send(body) for body in bodies)))

    def create(self, row_id: str, values: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        return {"type": "CREATE", "model": self.model, "id": row_id, "input": dict(values), **extra}

    def update(self, row_id: str, values: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        return {"type": "UPDATE", "model": self.model, "id": row_id, "input": dict(values), **extra}

    def commit_body(
        self,
        operations: Sequence[Mapping[str, Any]],
        correlation: str,
        *,
        intent_hash: bool = True,
        scope: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A commit as the engine sends it: with its intent hash, unless told otherwise."""
        body: dict[str, Any] = {
            "type": "commit",
            "correlationId": correlation,
            "operations": [dict(op) for op in operations],
        }
        if intent_hash:
            parsed = [Operation.model_validate(op) for op in operations]
            body["intentHash"] = operations_intent_hash(parsed)
        if scope is not None:
            body["scope"] = dict(scope)
        return body

    async def commit(
        self,
        operations: Sequence[Mapping[str, Any]],
        correlation: str | None = None,
        **options: Any,
    ) -> Reply:
        body = self.commit_body(operations, correlation or self.correlation("commit"), **options)
        return await self.send(body)

    async def load(self, row_id: str, scope: Mapping[str, Any] | None = None) -> Reply:
        body: dict[str, Any] = {"type": "load", "model": self.model, "id": row_id}
        if scope is not None:
            body["scope"] = dict(scope)
        return await self.send(body)

    async def list_page(
        self, query: Mapping[str, Any], scope: Mapping[str, Any] | None = None
    ) -> Reply:
        body: dict[str, Any] = {"type": "list", "model": self.model, "query": dict(query)}
        if scope is not None:
            body["scope"] = dict(scope)
        return await self.send(body)

    async def events(self, cursor: str | None, limit: int | None) -> Reply:
        body: dict[str, Any] = {"type": "events"}
        if cursor is not None:
            body["cursor"] = cursor
        if limit is not None:
            body["limit"] = limit
        return await self.send(body)

    # ------------------------------------------------------------ observing

    def expect_ok(self, reply: Reply, what: str, expected: str, fix: str | None = None) -> Any:
        """The answer's body, or a :class:`Violation` saying the source refused ``what``."""
        if not reply.ok:
            raise Violation(f"{what}: {describe(reply.sent)}", reply.shown(), expected, fix)
        return reply.body

    async def row(
        self, row_id: str, scope: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The row as load finds it now (None when absent). A 404 counts as absent here:
        whether a missing row answers null is a check of its own."""
        reply = await self.load(row_id, scope)
        if reply.status == 404 and reply.error != "source_unknown_model":
            return None
        body = self.expect_ok(
            reply,
            "load, to see what the commit left",
            'HTTP 200 {"row": …}: the row, or null when absent',
        )
        row = body.get("row") if isinstance(body, dict) else None
        if row is not None and not isinstance(row, dict):
            raise Violation(
                describe(reply.sent), reply.shown(), 'HTTP 200 {"row": {…}} or {"row": null}'
            )
        return row

    async def walk_list(
        self,
        query: Mapping[str, Any],
        *,
        scope: Mapping[str, Any] | None = None,
        max_rows: int = MAX_SCANNED,
    ) -> ListWalk:
        """Every row the query matches, page after page through ``nextCursor``.

        Raises :class:`Violation` on a refused page, and stops (``complete``
        false) after ``max_rows`` rows or a page that repeats a cursor."""
        walk = ListWalk()
        cursors: set[str] = set()
        page_query = dict(query)
        while True:
            reply = await self.list_page(page_query, scope)
            walk.pages.append(reply)
            if not reply.ok:
                return walk
            body = reply.body
            rows = body.get("rows") if isinstance(body, dict) else None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise Violation(
                    describe(reply.sent),
                    reply.shown(),
                    'HTTP 200 {"rows": [{…}, …]}: a list of rows (mappings)',
                    "return ListPage(rows=[...]) or a list of mappings",
                )
            walk.rows.extend(rows)
            cursor = body.get("nextCursor")
            if not cursor or not rows:
                return walk
            if cursor in cursors or len(walk.rows) >= max_rows:
                walk.complete = False
                return walk
            cursors.add(cursor)
            page_query["cursor"] = cursor

    async def walk_feed(
        self, cursor: str | None, limit: int | None, *, max_events: int = MAX_SCANNED
    ) -> FeedWalk:
        """Read the feed from ``cursor`` until a page brings nothing new.

        A page that only repeats events already read ends the walk too, so
        a source that re-delivers cannot keep the kit reading forever."""
        walk = FeedWalk(cursor=cursor)
        seen: set[Any] = set()
        while True:
            reply = await self.events(walk.cursor, limit)
            walk.pages.append(reply)
            body = reply.body
            events = body.get("events") if isinstance(body, dict) else None
            if not reply.ok or not isinstance(events, list):
                raise Violation(
                    describe(reply.sent),
                    reply.shown(),
                    'HTTP 200 {"events": [{…}, …], "nextCursor": "…"}',
                    "return EventsPage(events=[...], next_cursor=...)",
                )
            fresh = 0
            for event in events:
                event_id = event.get("id") if isinstance(event, dict) else None
                if event_id in seen:
                    walk.repeats.append((len(walk.pages), str(event_id)))
                    continue
                seen.add(event_id)
                walk.events.append(event if isinstance(event, dict) else {"id": None})
                fresh += 1
            next_cursor = body.get("nextCursor")
            if fresh == 0:
                walk.drained = True
                walk.drained_with_cursor = isinstance(next_cursor, str) and next_cursor != ""
                if walk.drained_with_cursor:
                    walk.cursor = next_cursor
                return walk
            if not isinstance(next_cursor, str) or not next_cursor:
                return walk
            walk.cursor = next_cursor
            if len(walk.events) >= max_events:
                raise Inconclusive(
                    f"the events feed holds more than {max_events:,} events; verify reads it "
                    "from the start, so run it against a source with fewer"
                )

    async def feed_end(self) -> str | None:
        """The position after the last event now in the feed (None: the start)."""
        walk = await self.walk_feed(None, 1000)
        return walk.cursor


def describe(body: Mapping[str, Any]) -> str:
    """A request body in one line a handler author recognises."""
    kind = body.get("type")
    scope = f" with scope {shorten(body['scope'], 120)}" if body.get("scope") else ""
    if kind == "load":
        return f"load {body.get('model')} {body.get('id')!r}{scope}"
    if kind == "list":
        return f"list {body.get('model')} {shorten(body.get('query') or {}, 200)}{scope}"
    if kind == "events":
        return f"events cursor={body.get('cursor')!r} limit={body.get('limit')!r}"
    if kind == "commit":
        operations = "; ".join(
            f"{op.get('type')} {op.get('model')} {op.get('id')!r} {shorten(op.get('input') or {}, 100)}"
            for op in body.get("operations", [])
        )
        intent = "" if "intentHash" in body else " (no intentHash)"
        return f"commit correlationId {body.get('correlationId')!r}{intent}: {operations}{scope}"
    return shorten(body)


def mismatches(
    row: Mapping[str, Any], values: Mapping[str, Any], fields: Sequence[FieldSpec]
) -> list[str]:
    """Which of the fields the kit compares differ between ``row`` and what was written."""
    compared = {spec.name for spec in fields if spec.kind in ("text", "integer", "boolean")}
    found = []
    for name, value in values.items():
        if name in compared and row.get(name) != value:
            found.append(
                f"{name} is {shorten(row.get(name), 80)}, not {shorten(value, 80)}"
                if name in row
                else f"{name} is missing"
            )
    return found
