"""What must a source get right? One check per guarantee.

Each check names the guarantee it tests and where the README promises it,
writes its own rows (ids under the run's prefix), sends requests as the
engine would, and either returns (passed, optionally with a note) or raises
:class:`~.session.Violation`: what was sent, what came back, what the
engine expects, and what to change.

The checks share no rows, so any subset runs alone (``--only``), and they
look only at their own rows and events, so other data in the source does
not disturb them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..wire.bodies import OPERATIONS
from .session import Inconclusive, Reply, Session, Violation, describe, mismatches, shorten

__all__ = ["CHECKS", "Check", "check_names"]

CheckFunction = Callable[[Session], Awaitable[str | None]]

# Where the README promises what the checks test.
_METHODS: Final = 'README, "Write a handler" (the methods table)'
_RETURNS: Final = 'README, "Write a handler" ("What a handler returns")'
_RECEIVES: Final = 'README, "Write a handler" ("What a handler receives")'
_REPLAYS: Final = 'README, "Security" ("Replays, stated exactly"), and the handler example'
_PER_OPERATION: Final = 'README, "Serve a database with no code" ("What it does per operation")'
_MISTAKES: Final = 'README, "Serve a database with no code" (request mistakes) and "Model names"'
_ANSWERS: Final = "docs/protocol.md, section 5 (request bodies and answers)"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    guarantee: str
    documented: str
    #: Operations the check needs; it is not run against a source that lacks one.
    needs: frozenset[str]
    run: CheckFunction
    #: Operations of which it needs at least one.
    needs_any: frozenset[str] = frozenset()

    def missing(self, served: Iterable[str]) -> list[str]:
        """The operations this check needs that the source does not serve."""
        served = set(served)
        missing = sorted(self.needs - served, key=OPERATIONS.index)
        if self.needs_any and not self.needs_any & served:
            missing.append(" or ".join(sorted(self.needs_any, key=OPERATIONS.index)))
        return missing


CHECKS: list[Check] = []


def check(
    name: str,
    guarantee: str,
    documented: str,
    needs: Iterable[str] = (),
    needs_any: Iterable[str] = (),
) -> Callable[[CheckFunction], CheckFunction]:
    def register(run: CheckFunction) -> CheckFunction:
        CHECKS.append(
            Check(name, guarantee, documented, frozenset(needs), run, frozenset(needs_any))
        )
        return run

    return register


def check_names() -> list[str]:
    return [item.name for item in CHECKS]


# ---------------------------------------------------------------- helpers


def _violation(
    reply: Reply, expected: str, fix: str | None = None, *, got: str | None = None
) -> Violation:
    return Violation(describe(reply.sent), got or reply.shown(), expected, fix)


def _rows_of_commit(reply: Reply) -> list[dict[str, Any]]:
    body = reply.body
    rows = body.get("rows") if isinstance(body, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise _violation(
            reply,
            'the rows as they stand after the write: {"rows": [{"id": "…", …}]}',
            "return CommitResult(rows=[...]) holding every row the commit wrote",
        )
    return rows


def _find(rows: Iterable[Mapping[str, Any]], row_id: str) -> dict[str, Any] | None:
    return next((dict(row) for row in rows if row.get("id") == row_id), None)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


async def _create(
    session: Session, tag: str, integer: Any = None, scope: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any], Reply]:
    """Commit one new row of this run; returns its id, its values and the answer."""
    row_id = session.new_id(tag, scope=scope)
    text = session.text(tag)
    values = session.values(text) if integer is None else session.values(text, integer)
    reply = await session.commit([session.create(row_id, values)], scope=scope)
    session.expect_ok(
        reply,
        "a commit of one CREATE",
        "HTTP 200 and the row written",
        "see the answer: the kit writes only the fields it was given (--model, --field)",
    )
    return row_id, values, reply


def _events_of(events: Iterable[Mapping[str, Any]], entity: str) -> list[Mapping[str, Any]]:
    return [event for event in events if event.get("entityId") == entity]


# ---------------------------------------------------------------- commit and read


@check(
    "commit-returns-rows",
    "a commit answers the rows it wrote, as they stand after the write",
    _RETURNS + " (CommitResult)",
    needs=["commit"],
)
async def commit_returns_rows(session: Session) -> str | None:
    row_id = session.new_id("create")
    values = session.values(session.text("create"), session.integer(1))
    reply = await session.commit([session.create(row_id, values)])
    session.expect_ok(reply, "a commit of one CREATE", 'HTTP 200 {"rows": [the row written]}')
    row = _find(_rows_of_commit(reply), row_id)
    if row is None:
        raise _violation(reply, f'a row with id {row_id!r} among the answer\'s "rows"')
    wrong = mismatches(row, values, session.plan.fields)
    if wrong:
        raise _violation(
            reply,
            f"the row as written ({'; '.join(wrong)})",
            "answer the row as it stands after the write",
        )
    return None


@check(
    "load-finds-committed-row",
    "load finds a row a commit wrote, with the values written",
    _METHODS,
    needs=["commit", "load"],
)
async def load_finds_committed_row(session: Session) -> str | None:
    row_id, values, _ = await _create(session, "load", session.integer(1))
    reply = await session.load(row_id)
    body = session.expect_ok(reply, "load of a committed row", 'HTTP 200 {"row": {…}}')
    row = body.get("row") if isinstance(body, dict) else None
    if not isinstance(row, dict) or row.get("id") != row_id:
        raise _violation(reply, f'{{"row": {{"id": {row_id!r}, …}}}}: the row the commit wrote')
    wrong = mismatches(row, values, session.plan.fields)
    if wrong:
        raise _violation(reply, f"the values the commit wrote ({'; '.join(wrong)})")
    return None


@check(
    "load-missing-is-null",
    'load of an id no row has answers {"row": null}, not an error',
    _METHODS + " and " + _ANSWERS,
    needs=["load"],
)
async def load_missing_is_null(session: Session) -> str | None:
    reply = await session.load(session.new_id("missing", write=False))
    body = reply.body
    if reply.status != 200 or not isinstance(body, dict) or body.get("row", ...) is not None:
        raise _violation(
            reply,
            'HTTP 200 {"row": null}: the engine reads a missing row as null',
            "return None from load when no row has the id (raise only when the source "
            "cannot answer)",
        )
    return None


@check(
    "list-finds-committed-rows",
    "list finds the rows commits wrote (where field = value)",
    _METHODS + " and " + _RECEIVES + " (Condition)",
    needs=["commit", "list"],
)
async def list_finds_committed_rows(session: Session) -> str | None:
    group = session.text("list")
    ids = [session.new_id("list"), session.new_id("list")]
    values = [session.values(group, session.integer(n)) for n in (1, 2)]
    reply = await session.commit([session.create(i, v) for i, v in zip(ids, values, strict=True)])
    session.expect_ok(reply, "a commit of two CREATEs", "HTTP 200")
    walk = await session.walk_list({"where": [[session.plan.text.name, group]]})
    if walk.refusal is not None:
        raise _violation(
            walk.refusal,
            'HTTP 200 {"rows": [...]}: "[field, value]" means field = value',
            "serve where conditions with the = operator at least",
        )
    found = {row.get("id"): row for row in walk.rows}
    missing = [i for i in ids if i not in found]
    if missing and walk.complete:
        raise _violation(
            walk.pages[0],
            f"both rows written ({', '.join(map(repr, ids))}); {', '.join(map(repr, missing))} "
            f"{'is' if len(missing) == 1 else 'are'} missing",
            got=f"{len(walk.rows)} rows over {len(walk.pages)} page(s): "
            f"{shorten([row.get('id') for row in walk.rows], 200)}",
        )
    if missing:
        raise Inconclusive("list matched too many rows to find the run's own")
    for row_id, written in zip(ids, values, strict=True):
        wrong = mismatches(found[row_id], written, session.plan.fields)
        if wrong:
            raise _violation(walk.pages[0], f"the values written ({'; '.join(wrong)})")
    return None


# ---------------------------------------------------------------- idempotency


@check(
    "replay-returns-first-answer",
    "a commit sent again with the same correlationId and intent answers its first answer "
    "and writes nothing",
    _REPLAYS,
    needs=["commit", "load"],
)
async def replay_returns_first_answer(session: Session) -> str | None:
    text = session.plan.text.name
    row_id = session.new_id("replay")
    first_values = session.values(session.text("replay-first"), session.integer(1))
    first_body = session.commit_body(
        [session.create(row_id, first_values)], session.correlation("replay")
    )
    first = await session.send(first_body)
    session.expect_ok(first, "the first commit", "HTTP 200")
    later_value = session.text("replay-later")
    later = await session.commit([session.update(row_id, {text: later_value})])
    session.expect_ok(later, "a later commit (another correlationId) updating the row", "HTTP 200")
    again = await session.send(first_body)
    sent = (
        f"{describe(first_body)}, sent again as a new delivery (as the engine does after a "
        f"connector restart), after another commit set {text} to {later_value!r}"
    )
    fix = (
        "keep each correlation_id with its intent hash and answer; for a repeated key with the "
        "same intent, return the kept answer without applying the operations"
    )
    if not again.ok:
        raise Violation(sent, again.shown(), "HTTP 200 and the first answer", fix)
    if _canonical(again.body) != _canonical(first.body):
        raise Violation(
            sent,
            f"{again.shown(200)}; the first answer was {first.shown(200)}",
            "the first answer again, unchanged",
            fix,
        )
    row = await session.row(row_id)
    if row is None or row.get(text) != later_value:
        raise Violation(
            sent,
            f"{again.shown(120)}; then load found {shorten(row, 200)}",
            f"the row as the later commit left it ({text} = {later_value!r}): a replay must not "
            "write again",
            fix,
        )
    return None


@check(
    "replay-other-intent-refused",
    "the same correlationId with another intent is refused with 409 idempotency_conflict "
    "and writes nothing",
    _REPLAYS + " (commit.effective_intent_hash)",
    needs=["commit", "load"],
)
async def replay_other_intent_refused(session: Session) -> str | None:
    text = session.plan.text.name
    for with_hash in (True, False):
        row_id = session.new_id("conflict")
        written = session.text("conflict-first")
        correlation = session.correlation("conflict")
        first = await session.commit(
            [session.create(row_id, session.values(written))], correlation, intent_hash=with_hash
        )
        session.expect_ok(first, "the first commit", "HTTP 200")
        other = await session.commit(
            [session.update(row_id, {text: session.text("conflict-other")})],
            correlation,
            intent_hash=with_hash,
        )
        how = (
            "the engine's intentHash differs"
            if with_hash
            else "no intentHash: the operations differ, so commit.effective_intent_hash does"
        )
        fix = (
            "compare commit.effective_intent_hash (not only commit.intent_hash, which the "
            "engine may leave out) with the one kept for the correlation_id, and raise "
            'SourceError("idempotency_conflict", ..., status=409) when they differ'
        )
        if other.status != 409 or other.error != "idempotency_conflict":
            raise Violation(
                f"{describe(first.sent)}; then, under the same correlationId, "
                f"{describe(other.sent).split(': ', 1)[1]}",
                other.shown(),
                f"HTTP 409 idempotency_conflict ({how}), as for a key reused for another change",
                fix,
            )
        row = await session.row(row_id)
        if row is None or row.get(text) != written:
            raise _violation(
                other,
                f"the row left as the first commit wrote it ({text} = {written!r})",
                "check the key before applying anything",
                got=f"{other.shown(120)}; then load found {shorten(row, 200)}",
            )
    return None


@check(
    "concurrent-duplicates-apply-once",
    "identical commits arriving at once apply once and all answer the same",
    _PER_OPERATION + " (Idempotency) and " + _REPLAYS,
    needs=["commit"],
)
async def concurrent_duplicates_apply_once(session: Session) -> str | None:
    position = await session.feed_end() if "events" in session.served else None
    row_id = session.new_id("concurrent")
    body = session.commit_body(
        [session.create(row_id, session.values(session.text("concurrent"), session.integer(1)))],
        session.correlation("concurrent"),
    )
    copies = 4
    replies = await session.send_all([body] * copies)
    sent = f"{describe(body)}, {copies} copies at once, each a delivery of its own"
    fix = (
        "make the idempotency record the arbiter: reserve the correlation_id first (a unique "
        "key, a lock) so a concurrent copy waits for the first and returns its answer"
    )
    answers = {(reply.status, _canonical(reply.body)) for reply in replies}
    if any(not reply.ok for reply in replies) or len(answers) > 1:
        shown = "; ".join(reply.shown(120) for reply in replies)
        raise Violation(sent, shown, f"{copies} identical HTTP 200 answers", fix)
    if "events" not in session.served:
        return "events not served: checked the answers only"
    walk = await session.walk_feed(position, 1000)
    written = _events_of(walk.unique(), row_id)
    if not written:  # events-carry-identity says so; here nothing tells how often it applied
        return "the source wrote no event for the commit: checked the answers only"
    if len(written) > 1:
        raise Violation(
            sent,
            f"{len(written)} events for {row_id!r} in the feed: {shorten(written, 300)}",
            "one event: the commit applied once",
            fix,
        )
    return None


@check(
    "new-correlation-applies",
    "a commit under a new correlationId applies, even with operations sent before",
    _REPLAYS,
    needs=["commit", "load"],
)
async def new_correlation_applies(session: Session) -> str | None:
    text = session.plan.text.name
    row_id, _, _ = await _create(session, "new")
    first, second = session.text("new-b"), session.text("new-c")
    sequence = [first, second, first]
    for value in sequence:
        reply = await session.commit([session.update(row_id, {text: value})])
        session.expect_ok(reply, "an UPDATE under a new correlationId", "HTTP 200")
    row = await session.row(row_id)
    if row is None or row.get(text) != first:
        raise Violation(
            f"three commits, each with a new correlationId, setting {text} of {row_id!r} to "
            f"{first!r}, {second!r}, then {first!r} again (the same operations as the first)",
            f"load found {shorten(row, 200)}",
            f"{text} = {first!r}: each new correlationId is a new change",
            "key replays on correlation_id alone, never on the operations or their hash",
        )
    return None


@check(
    "commit-atomic",
    "a commit that is refused writes none of its operations",
    'README, "Write a handler" (the handler example: "Apply every operation in one transaction")',
    needs=["commit", "load"],
)
async def commit_atomic(session: Session) -> str | None:
    text = session.plan.text.name
    refused = 0
    cases: list[tuple[str, dict[str, Any]]] = [
        ("an UPDATE of a row that does not exist", {"id": session.new_id("atomic-absent")}),
        ("an UPDATE without an id", {}),
    ]
    for what, target in cases:
        row_id = session.new_id("atomic")
        second: dict[str, Any] = {
            "type": "UPDATE",
            "model": session.model,
            "input": {text: session.text("atomic-second")},
            **target,
        }
        reply = await session.commit(
            [session.create(row_id, session.values(session.text("atomic"))), second]
        )
        if reply.ok:
            continue
        refused += 1
        row = await session.row(row_id)
        if row is not None:
            raise _violation(
                reply,
                f"no row {row_id!r}: the commit (a CREATE, then {what}) was refused, so its "
                "first operation must not stay written",
                "validate every operation, then apply them all in one transaction (or none)",
                got=f"{reply.shown(160)}, yet load found {shorten(row, 200)}",
            )
    if refused == 0:
        return "the source accepted both commits (an UPDATE that creates, one without an id)"
    return None


# ---------------------------------------------------------------- the outbox


@check(
    "replay-writes-no-second-event",
    "a replayed commit writes no second event",
    _RETURNS + " (EventsPage: none for a replayed commit)",
    needs=["commit", "events"],
)
async def replay_writes_no_second_event(session: Session) -> str | None:
    position = await session.feed_end()
    row_id = session.new_id("outbox-replay")
    body = session.commit_body(
        [
            session.create(
                row_id,
                session.values(session.text("outbox-replay")),
                transactionId=session.correlation("tx"),
            )
        ],
        session.correlation("outbox-replay"),
    )
    for _ in range(2):
        session.expect_ok(await session.send(body), "the commit", "HTTP 200")
    walk = await session.walk_feed(position, 1000)
    events = _events_of(walk.unique(), row_id)
    if len(events) != 1:
        raise Violation(
            f"{describe(body)}, sent twice (two deliveries)",
            f"{len(events)} events for {row_id!r} after the cursor {position!r}: {shorten(events, 300)}",
            "exactly one event: the replay returns the kept answer and writes nothing",
            "write the outbox event in the same transaction as the rows and the idempotency "
            "record, and skip all three on a replay"
            if events
            else "write one event per operation in the commit's transaction",
        )
    return None


@check(
    "events-carry-identity",
    "each operation's event carries its model, entityId, type, correlationId and "
    "transactionId (and no legacy clientTxId)",
    _RETURNS + " (Event) and " + _PER_OPERATION + " (events)",
    needs=["commit", "events"],
)
async def events_carry_identity(session: Session) -> str | None:
    position = await session.feed_end()
    correlation = session.correlation("identity")
    ids = [session.new_id("identity"), session.new_id("identity")]
    operations = [
        session.create(
            i, session.values(session.text("identity")), transactionId=session.correlation("tx")
        )
        for i in ids
    ]
    reply = await session.commit(operations, correlation)
    session.expect_ok(reply, "a commit of two CREATEs", "HTTP 200")
    walk = await session.walk_feed(position, 1000)
    events = walk.unique()
    event_ids: set[str] = set()
    for operation in operations:
        found = _events_of(events, operation["id"])
        wanted = {
            "model": session.model,
            "entityId": operation["id"],
            "type": "CREATE",
            "correlationId": correlation,
            "transactionId": operation["transactionId"],
        }
        if len(found) != 1:
            raise _violation(
                reply,
                f"one event for {operation['id']!r} after the cursor {position!r}",
                "write one event per operation, in the commit's transaction",
                got=f"{len(found)} such events: {shorten(found, 300)}",
            )
        wrong = [
            f"{key} is {shorten(found[0].get(key), 60)}, not {value!r}"
            for key, value in wanted.items()
            if found[0].get(key) != value
        ]
        if not isinstance(found[0].get("id"), str) or not found[0]["id"]:
            wrong.append("it has no id (the engine's replay key)")
        if found[0].get("clientTxId") is not None:
            wrong.append("clientTxId is set: it is the legacy echo identity, left empty")
        if wrong:
            raise _violation(
                reply,
                f"an event {shorten(wanted, 300)}",
                "copy commit.correlation_id and each operation's transaction_id into its "
                "event, and leave client_tx_id None",
                got=f"the event {shorten(found[0], 300)}: {'; '.join(wrong)}",
            )
        event_ids.add(found[0]["id"])
    if len(event_ids) != len(operations):
        raise _violation(
            reply,
            "a distinct event id for each operation (the engine's replay key)",
            "give each operation's event an id of its own, e.g. correlationId:index",
            got=f"both events have the id {event_ids.pop()!r}",
        )
    return None


@check(
    "events-cursor-advances",
    "paging the feed (limit 1) never delivers an event twice, and every page keeps to the limit",
    _RETURNS + " (EventsPage, Event: id stable and unique)",
    needs=["commit", "events"],
)
async def events_cursor_advances(session: Session) -> str | None:
    position = await session.feed_end()
    ids = [(await _create(session, "cursor"))[0] for _ in range(3)]
    walk = await session.walk_feed(position, 1)
    for reply in walk.pages:
        events = reply.body.get("events", []) if isinstance(reply.body, dict) else []
        if len(events) > 1:
            raise _violation(
                reply, "at most 1 event: the page's limit", "return at most `limit` events"
            )
    if walk.repeats:
        page, event_id = walk.repeats[0]
        reply = walk.pages[page - 1]
        raise _violation(
            reply,
            "events after the cursor only: each event is delivered once",
            "hand back as nextCursor the position after the last event delivered, and read "
            "strictly after it",
            got=f"page {page} ({reply.shown(200)}) delivered again the event {event_id!r}, "
            "already delivered on an earlier page",
        )
    first_with_ours = next(
        (
            reply
            for reply in walk.pages
            if any(e.get("entityId") in ids for e in (reply.body or {}).get("events", []))
        ),
        None,
    )
    if first_with_ours is not None and not (first_with_ours.body or {}).get("nextCursor"):
        raise _violation(
            first_with_ours, "a nextCursor with every page", "always return next_cursor"
        )
    return None


@check(
    "events-in-commit-order",
    "the feed after a cursor delivers every event, in commit order",
    _RETURNS + " (EventsPage: in the order commits wrote them, each once)",
    needs=["commit", "events"],
)
async def events_in_commit_order(session: Session) -> str | None:
    position = await session.feed_end()
    first = session.new_id("order-events")
    second, third = session.new_id("order-events"), session.new_id("order-events")
    fourth = session.new_id("order-events")
    for group in ([first], [second, third], [fourth]):
        reply = await session.commit(
            [session.create(i, session.values(session.text("order-events"))) for i in group]
        )
        session.expect_ok(reply, "a commit", "HTTP 200")
    expected = [first, second, third, fourth]
    walk = await session.walk_feed(position, 2)
    delivered = [e.get("entityId") for e in walk.unique() if e.get("entityId") in expected]
    if delivered != expected:
        missing = [i for i in expected if i not in delivered]
        raise Violation(
            f"four CREATEs in three commits ({', '.join(map(repr, expected))}), then events "
            f"from the cursor {position!r}, limit 2, following nextCursor",
            f"the feed delivered {shorten(delivered, 300)} over {len(walk.pages)} pages",
            "each event once, in commit order"
            + (f"; {', '.join(map(repr, missing))} never came" if missing else ""),
            "read strictly after the cursor, in the order commits wrote their events, and hand "
            "back the position of the last event delivered"
            if missing
            else "order events by the position each commit wrote them at",
        )
    return None


@check(
    "events-drained-cursor",
    "a drained feed answers no events with a nextCursor, and the next poll from it brings "
    "only what was written since",
    _RETURNS + ' (EventsPage: "hand back a position even when empty")',
    needs=["commit", "events"],
)
async def events_drained_cursor(session: Session) -> str | None:
    position = await session.feed_end()
    before, _, _ = await _create(session, "drained")
    walk = await session.walk_feed(position, 1000)
    last = walk.pages[-1]
    last_events = (last.body or {}).get("events", [])
    if last_events:
        raise _violation(
            last,
            'no events once the feed is drained: {"events": [], "nextCursor": "…"}',
            "read strictly after the cursor given",
        )
    if not walk.drained_with_cursor:
        raise _violation(
            last,
            'a nextCursor with the empty page: {"events": [], "nextCursor": "…"}, so the next '
            "poll resumes there",
            "return EventsPage(events=[], next_cursor=<the cursor given, or the last position>)",
        )
    after, _, _ = await _create(session, "drained")
    poll = await session.events(walk.cursor, 1000)
    events = (poll.body or {}).get("events", []) if isinstance(poll.body, dict) else []
    entities = [event.get("entityId") for event in events]
    if before in entities or after not in entities:
        raise _violation(
            poll,
            f"the event of the commit written since ({after!r}), and not the one read before "
            f"({before!r})",
            "the drained cursor must name the position after the last event",
        )
    return None


# ---------------------------------------------------------------- list


def _operator_rows(session: Session, group: str) -> dict[str, dict[str, Any]]:
    nullable = session.plan.integer is None or session.plan.integer.nullable
    return {
        "aa": session.values(group + "aa", session.integer(1)),
        "ab": session.values(group + "ab", session.integer(2)),
        "Ba": session.values(group + "Ba", session.integer(3)),
        "bb": session.values(group + "bb", None if nullable else session.integer(4)),
    }


@dataclass(frozen=True, slots=True)
class _Case:
    op: str
    on_integer: bool
    value: Any
    matching: frozenset[str]
    excluded: frozenset[str]


def _operator_cases(session: Session, group: str) -> list[_Case]:
    def case(op: str, value: Any, matching: str, excluded: str, on_integer: bool = False) -> _Case:
        return _Case(
            op, on_integer, value, frozenset(matching.split()), frozenset(excluded.split())
        )

    cases = [
        case("=", group + "ab", "ab", "aa Ba bb"),
        case("!=", group + "ab", "aa Ba bb", "ab"),
        # Text order differs between collations for upper and lower case: the
        # comparisons look only at the lowercase rows.
        case("<", group + "ab", "aa", "ab bb"),
        case("<=", group + "ab", "aa ab", "bb"),
        case(">", group + "ab", "bb", "aa ab"),
        case(">=", group + "ab", "ab bb", "aa"),
        case("IN", [group + "aa", group + "bb"], "aa bb", "ab Ba"),
        case("NOT IN", [group + "aa", group + "bb"], "ab Ba", "aa bb"),
        case("LIKE", group + "a%", "aa ab", "Ba bb"),
        case("LIKE", group + "_a", "aa Ba", "ab bb"),
        case("NOT LIKE", group + "a%", "Ba bb", "aa ab"),
        case("ILIKE", group + "b%", "Ba bb", "aa ab"),
        case("NOT ILIKE", group + "B%", "aa ab", "Ba bb"),
    ]
    if session.plan.integer is not None:
        number = session.integer
        cases += [
            case("=", number(3), "Ba", "aa ab", True),
            case("!=", number(1), "ab Ba", "aa", True),
            case("<", number(2), "aa", "ab Ba", True),
            case("<=", number(2), "aa ab", "Ba", True),
            case(">", number(2), "Ba", "aa ab", True),
            case(">=", number(2), "ab Ba", "aa", True),
            case("IN", [number(1), number(3)], "aa Ba", "ab", True),
            case("NOT IN", [number(1), number(3)], "ab", "aa Ba", True),
        ]
        if session.plan.integer.nullable:
            # As the engine evaluates a condition (and the SQL adapter, on purpose):
            # = null is IS NULL, and a null is "not equal" to any value given.
            cases += [
                case("IS", None, "bb", "aa ab Ba", True),
                case("IS NOT", None, "aa ab Ba", "bb", True),
                case("=", None, "bb", "aa ab Ba", True),
                case("!=", number(1), "ab Ba bb", "aa", True),
                case("NOT IN", [number(1), number(3)], "ab bb", "aa Ba", True),
            ]
    return cases


@check(
    "list-where-operators",
    "list applies each where operator it accepts as documented (= != < <= > >= IN NOT IN "
    "IS IS NOT LIKE NOT LIKE ILIKE NOT ILIKE); = at least",
    _RECEIVES + " (Condition) and " + _PER_OPERATION + " (list)",
    needs=["commit", "list"],
)
async def list_where_operators(session: Session) -> str | None:
    group = session.text("op") + "-"
    rows = _operator_rows(session, group)
    ids = {key: session.new_id(f"op-{key.lower()}") for key in rows}
    reply = await session.commit([session.create(ids[key], values) for key, values in rows.items()])
    session.expect_ok(reply, "a commit of four CREATEs", "HTTP 200")
    by_id = {row_id: key for key, row_id in ids.items()}
    refused: dict[str, str] = {}
    unchecked: set[str] = set()
    for case in _operator_cases(session, group):
        field = (
            session.plan.integer.name
            if case.on_integer and session.plan.integer
            else session.plan.text.name
        )
        condition = [field, case.value] if case.op == "=" else [field, case.op, case.value]
        walk = await session.walk_list({"where": [condition]})
        if walk.refusal is not None:
            if walk.refusal.status >= 500 or case.op == "=":
                raise _violation(
                    walk.refusal,
                    "HTTP 200 and the matching rows"
                    + (": = is the operator the engine sends most" if case.op == "=" else ""),
                    "a where condition the source cannot serve is a 400 with a code, never a crash"
                    if walk.refusal.status >= 500
                    else "serve the = operator",
                )
            refused.setdefault(case.op, f"{walk.refusal.status} {walk.refusal.error}")
            continue
        got = {by_id[row["id"]] for row in walk.rows if row.get("id") in by_id}
        wrong_in = case.excluded & got
        wrong_out = case.matching - got
        if wrong_out and not walk.complete:
            unchecked.add(case.op)
            continue
        if wrong_in or wrong_out:
            table = "; ".join(
                f"{key} = {shorten(rows[key].get(field), 60)}" for key in sorted(rows)
            )
            problem = []
            if wrong_out:
                problem.append(f"missing {', '.join(repr(ids[k]) for k in sorted(wrong_out))}")
            if wrong_in:
                problem.append(f"returned {', '.join(repr(ids[k]) for k in sorted(wrong_in))}")
            raise Violation(
                f"list {session.model} where {shorten(condition, 120)}, over rows whose {field} is: "
                f"{table}",
                f"{walk.pages[0].shown(120)}: " + " and ".join(problem),
                f"exactly the rows where {field} {case.op} {shorten(case.value, 80)}: "
                f"{', '.join(repr(ids[k]) for k in sorted(case.matching))}",
                "apply the condition to every row, and refuse an operator you cannot serve "
                "with a 400 (SourceError) rather than answering rows it does not match"
                if wrong_in
                else "apply the operator as the engine does (= null: IS NULL; != and NOT IN: "
                "nulls included; LIKE: % any run, _ one character, case-sensitive; ILIKE: "
                "case-insensitive; IN: any of the list)",
            )
    notes = []
    by_answer: dict[str, list[str]] = {}
    for op, answer in refused.items():
        by_answer.setdefault(answer, []).append(op)
    for answer, ops in sorted(by_answer.items()):
        notes.append(f"refused with {answer}: {', '.join(sorted(ops))}")
    if unchecked:
        notes.append("not checked (too many rows matched): " + ", ".join(sorted(unchecked)))
    return "; ".join(notes) or None


@check(
    "list-order",
    "list sorts by orderBy, ascending or descending as asked, ties by id",
    _RECEIVES + " (ListQuery) and " + _RETURNS + " (ListPage)",
    needs=["commit", "list"],
)
async def list_order(session: Session) -> str | None:
    integer = session.plan.integer
    if integer is None:
        return "not checked: the model has no integer field to sort by (--field NAME=integer)"
    group = session.text("order")
    layout = [("m", 30), ("tie-b", 20), ("z", 10), ("tie-a", 20), ("c", 40)]
    ids = {tag: session.new_id(f"order-{tag}") for tag, _ in layout}
    numbers = {ids[tag]: session.integer(n) for tag, n in layout}
    reply = await session.commit(
        [session.create(ids[tag], session.values(group, session.integer(n))) for tag, n in layout]
    )
    session.expect_ok(reply, "a commit of five CREATEs", "HTTP 200")
    ascending = sorted(numbers, key=lambda i: (numbers[i], i))
    for order in ("asc", "desc"):
        query = {
            "where": [[session.plan.text.name, group]],
            "orderBy": integer.name,
            "order": order,
        }
        walk = await session.walk_list(query)
        if walk.refusal is not None:
            raise _violation(
                walk.refusal,
                f"HTTP 200 and the rows sorted by {integer.name} {order}",
                "sort by query.order_by in query.order, then by id",
            )
        got = [row["id"] for row in walk.rows if row.get("id") in numbers]
        shown = [(i, numbers[i]) for i in got]
        if order == "asc":
            good = got == ascending
            expected = f"by {integer.name} ascending, ties by id: {shorten(ascending, 300)}"
        else:
            values = [numbers[i] for i in got]
            good = sorted(got) == sorted(numbers) and values == sorted(values, reverse=True)
            expected = f"by {integer.name} descending: {shorten([numbers[i] for i in ascending[::-1]], 200)}"
        if not good:
            raise _violation(
                walk.pages[0],
                expected,
                "sort by query.order_by in query.order, then by id",
                got=f"{walk.pages[0].shown(80)}: our rows came as {shorten(shown, 300)}",
            )
    return None


@check(
    "list-limit",
    "list answers at most limit rows, with a nextCursor while more remain",
    _RETURNS + " (ListPage: next_cursor when more rows remain)",
    needs=["commit", "list"],
)
async def list_limit(session: Session) -> str | None:
    group = session.text("limit")
    ids = [session.new_id("limit") for _ in range(3)]
    reply = await session.commit(
        [session.create(i, session.values(group, session.integer(n))) for n, i in enumerate(ids)]
    )
    session.expect_ok(reply, "a commit of three CREATEs", "HTTP 200")
    query = {"where": [[session.plan.text.name, group]], "limit": 2}
    first = await session.list_page(query)
    body = session.expect_ok(first, "list with limit 2", "HTTP 200 and at most 2 rows")
    rows = body.get("rows", []) if isinstance(body, dict) else []
    if len(rows) > 2:
        raise _violation(first, "at most 2 rows (the limit)", "return at most query.limit rows")
    if len(rows) < 3 and not body.get("nextCursor"):
        raise _violation(
            first,
            f"a nextCursor: 3 rows match and the page has {len(rows)}",
            "set next_cursor whenever more rows remain",
        )
    walk = await session.walk_list(query)
    got = [str(row.get("id")) for row in walk.rows]
    if sorted(got) != sorted(ids):
        raise _violation(
            walk.pages[-1],
            f"the 3 matching rows once each over the pages: {shorten(ids, 200)}",
            "each page starts after the last row of the one before",
            got=f"{shorten(got, 300)} over {len(walk.pages)} pages",
        )
    return None


async def _walk_with_inserts(
    session: Session, query: dict[str, Any], inserts: Sequence[tuple[str, int]], group: str
) -> tuple[list[str], list[Reply], list[str]]:
    """Page through ``query`` (limit 2), inserting rows after the first page."""
    seen: list[str] = []
    pages: list[Reply] = []
    inserted: list[str] = []
    page_query = dict(query)
    while len(pages) < 50:
        reply = await session.list_page(page_query)
        pages.append(reply)
        body = session.expect_ok(reply, "a page of list", "HTTP 200")
        rows = body.get("rows", []) if isinstance(body, dict) else []
        seen += [
            row.get("id") for row in rows if str(row.get("id", "")).startswith(session.plan.prefix)
        ]
        if len(pages) == 1:
            for tag, number in inserts:
                row_id = session.new_id(tag)
                inserted.append(row_id)
                created = await session.commit(
                    [session.create(row_id, session.values(group, session.integer(number)))]
                )
                session.expect_ok(created, "a commit between two pages", "HTTP 200")
        cursor = body.get("nextCursor") if isinstance(body, dict) else None
        if not cursor or not rows:
            break
        page_query["cursor"] = cursor
    return seen, pages, inserted


@check(
    "list-cursor-stable",
    "paging with nextCursor while rows are inserted never repeats a row or skips one",
    _RETURNS + " (ListPage) and " + _PER_OPERATION + " (list: keyset cursor)",
    needs=["commit", "list"],
)
async def list_cursor_stable(session: Session) -> str | None:
    group = session.text("cursor")
    layout = [("cur-b", 2), ("cur-d", 4), ("cur-f", 6), ("cur-h", 8), ("cur-j", 10)]
    ids = [session.new_id(tag) for tag, _ in layout]
    reply = await session.commit(
        [
            session.create(i, session.values(group, session.integer(n)))
            for i, (_, n) in zip(ids, layout, strict=True)
        ]
    )
    session.expect_ok(reply, "a commit of five CREATEs", "HTTP 200")
    walks: list[tuple[str, dict[str, Any], list[tuple[str, int]]]] = [
        ("in the default order", {"where": [[session.plan.text.name, group]], "limit": 2},
         [("cur-a", 1), ("cur-k", 11)]),
    ]  # fmt: skip
    if session.plan.integer is not None:
        walks.append(
            (
                f"by {session.plan.integer.name} descending",
                {
                    "where": [[session.plan.text.name, group]],
                    "limit": 2,
                    "orderBy": session.plan.integer.name,
                    "order": "desc",
                },
                [("cur-l", 12), ("cur-0", 0)],
            )
        )
    present = list(ids)
    for how, query, inserts in walks:
        seen, pages, inserted = await _walk_with_inserts(session, query, inserts, group)
        repeated = sorted({i for i in seen if seen.count(i) > 1})
        skipped = [i for i in present if i not in seen]
        if repeated or skipped:
            problem = "; ".join(
                part
                for part in (
                    f"{', '.join(map(repr, repeated))} came twice" if repeated else "",
                    f"{', '.join(map(repr, skipped))} never came" if skipped else "",
                )
                if part
            )
            raise Violation(
                f"list {session.model} {shorten(query, 200)} ({how}), page after page; after "
                f"the first page, commits inserted {', '.join(map(repr, inserted))}",
                f"{len(pages)} pages brought {shorten(seen, 300)}: {problem}",
                "every row that existed before the first page exactly once",
                "make the cursor a position in the sort (the last row's sort value and id) and "
                "read strictly after it; an offset shifts when rows are inserted before it",
            )
        present += inserted
    return None


# ---------------------------------------------------------------- names, scope, values


@check(
    "commit-model-lowercased",
    "a commit naming the model in lowercase, as the engine's clients send it, writes that model",
    'README, "Write a handler" ("Model names")',
    needs=["commit", "load"],
)
async def commit_model_lowercased(session: Session) -> str | None:
    lowered = session.model.lower()
    if lowered == session.model:
        return f"the model's name {session.model!r} is lowercase already"
    row_id = session.new_id("lowercase", model=lowered)
    operation = {
        **session.create(row_id, session.values(session.text("lowercase"))),
        "model": lowered,
    }
    reply = await session.commit([operation])
    session.expect_ok(reply, f"a commit naming the model {lowered!r}", "HTTP 200")
    if await session.row(row_id) is None:
        raise _violation(
            reply,
            f"the row written to {session.model!r}: load {session.model} {row_id!r} finds it",
            f"declare the models you serve (model_names = ({session.model!r},)) and the "
            f"dispatcher hands you {session.model!r} for {lowered!r}",
            got=f"{reply.shown(160)}, then load {session.model} {row_id!r} found nothing",
        )
    return None


@check(
    "unknown-model",
    "a model the source does not serve is answered 400 source_unknown_model (or found empty), "
    "never a crash",
    _MISTAKES,
    needs_any=["load", "list"],
)
async def unknown_model(session: Session) -> str | None:
    model = f"verifyNoSuchModel{session.plan.prefix.split('-')[1]}"
    notes = []
    bodies: list[dict[str, Any]] = []
    if "load" in session.served:
        bodies.append(
            {"type": "load", "model": model, "id": session.new_id("nomodel", write=False)}
        )
    if "list" in session.served:
        bodies.append({"type": "list", "model": model, "query": {}})
    for body in bodies:
        reply = await session.send(body)
        if reply.status == 400 and reply.error == "source_unknown_model":
            continue
        answer = reply.body if isinstance(reply.body, dict) else {}
        empty = (
            answer.get("row", ...) is None if body["type"] == "load" else answer.get("rows") == []
        )
        if reply.ok and empty:
            continue
        if 400 <= reply.status < 500 and reply.error:
            notes.append(f"{body['type']} answered {reply.status} {reply.error}")
            continue
        raise _violation(
            reply,
            "HTTP 400 source_unknown_model (or, for a source that serves any model name, "
            '{"row": null} / {"rows": []})',
            "declare the models you serve (model_names, or served_models()) and the "
            "dispatcher answers this for you",
        )
    if notes:
        return "; ".join(notes) + " (the documented code is source_unknown_model)"
    return None


@check(
    "unknown-field",
    "a where, orderBy or write naming a field the model does not have is refused with a 400 "
    "(or matches nothing), never a crash or every row",
    _MISTAKES,
    needs_any=["list", "commit"],
)
async def unknown_field(session: Session) -> str | None:
    field = f"verifyNoSuchField{session.plan.prefix.split('-')[1]}"
    notes: list[str] = []

    def refusal(reply: Reply) -> bool:
        if 400 <= reply.status < 500 and reply.error:
            if reply.error != "source_unknown_field":
                notes.append(f"{reply.status} {reply.error}")
            return True
        return False

    if "list" in session.served:
        reply = await session.list_page({"where": [[field, "x"]]})
        rows = (reply.body or {}).get("rows") if isinstance(reply.body, dict) else None
        if not refusal(reply) and not (reply.ok and rows == []):
            raise _violation(
                reply,
                f"HTTP 400 source_unknown_field, or no rows: no row has a field {field!r}",
                "refuse a condition on a field the model lacks; ignoring it answers rows the "
                "caller filtered out",
            )
        reply = await session.list_page({"orderBy": field, "limit": 1})
        if not refusal(reply) and not reply.ok:
            raise _violation(reply, "HTTP 400 source_unknown_field, or a page of rows")
    if "commit" in session.served:
        row_id = session.new_id("nofield")
        values = {**session.values(session.text("nofield")), field: "x"}
        reply = await session.commit([session.create(row_id, values)])
        if not reply.ok and not refusal(reply):
            raise _violation(
                reply, "HTTP 400 source_unknown_field, or HTTP 200 (a schemaless store)"
            )
        if not reply.ok and "load" in session.served and await session.row(row_id) is not None:
            raise _violation(reply, f"no row {row_id!r}: the commit was refused")
    if notes:
        return (
            "answered "
            + ", ".join(sorted(set(notes)))
            + " (the SQL adapter's code is source_unknown_field)"
        )
    return None


@check(
    "scope-reaches-handler",
    "a row written under a scope (organizationId, projectId, branchId) is found under that scope",
    _RECEIVES + " (Scope) and " + _ANSWERS + " (scope)",
    needs=["commit"],
    needs_any=["load", "list"],
)
async def scope_reaches_handler(session: Session) -> str | None:
    scope = {
        "organizationId": session.engine.organization_id,
        "projectId": session.text("project"),
        "branchId": session.text("branch"),
        "participantId": session.text("participant"),
        "participantKind": "user",
    }
    row_id, values, _ = await _create(session, "scope", session.integer(1), scope)
    if "load" in session.served:
        found = await session.load(row_id, scope)
        body = session.expect_ok(found, "load under the same scope", 'HTTP 200 {"row": {…}}')
        if not isinstance(body, dict) or not isinstance(body.get("row"), dict):
            raise _violation(
                found,
                f"the row written under this scope ({row_id!r})",
                "read and write under the same scope: ctx.scope (or commit.scope) holds it",
            )
    if "list" in session.served:
        where = {"where": [[session.plan.text.name, values[session.plan.text.name]]]}
        listed = await session.list_page(where, scope)
        body = session.expect_ok(listed, "list under the same scope", 'HTTP 200 {"rows": [...]}')
        if _find(body.get("rows", []) if isinstance(body, dict) else [], row_id) is None:
            raise _violation(listed, f"the row written under this scope ({row_id!r})")
    return None


async def _round_trip(session: Session, tag: str, value: str) -> None:
    """Write ``value`` to the text field, then read it back by load (and list when served)."""
    text = session.plan.text.name
    row_id = session.new_id(tag)
    reply = await session.commit([session.create(row_id, session.values(value))])
    session.expect_ok(reply, "the commit", "HTTP 200 and the row as written")
    readers: list[tuple[str, Reply, dict[str, Any] | None]] = []
    answered = reply.body.get("rows") if isinstance(reply.body, dict) else None
    if isinstance(answered, list):  # whether it answers rows at all is commit-returns-rows'
        readers.append(("the commit's answer", reply, _find(answered, row_id)))
    if "load" in session.served:
        loaded = await session.load(row_id)
        row = (loaded.body or {}).get("row") if isinstance(loaded.body, dict) else None
        readers.append(("load", loaded, row if isinstance(row, dict) else None))
    if "list" in session.served and len(value) < 4096:
        listed = await session.list_page({"where": [[text, value]]})
        rows = (listed.body or {}).get("rows", []) if isinstance(listed.body, dict) else []
        readers.append(("list where = the value", listed, _find(rows, row_id)))
    for what, answer, row in readers:
        got = None if row is None else row.get(text)
        if got != value:
            difference = (
                "no row"
                if row is None
                else f"{len(got)} characters"
                if isinstance(got, str)
                else shorten(got, 80)
            )
            first_difference = next(
                (n for n, (a, b) in enumerate(zip(value, got or "", strict=False)) if a != b),
                None,
            )
            raise _violation(
                answer,
                f"{text} exactly as written ({len(value):,} characters"
                + (f", {shorten(value, 80)}" if len(value) < 200 else "")
                + ")",
                "store and answer text unchanged: JSON strings are Unicode, of any length",
                got=f"{what}: {answer.shown(120)} → {difference}"
                + (
                    f", first difference at character {first_difference}"
                    if first_difference is not None
                    else ""
                ),
            )


@check(
    "large-row",
    "a row of 1 MiB of text (or as much as the field holds) round-trips unchanged",
    'README, "Configuration" (--max-message-size: 16 MiB frames) and ' + _METHODS,
    needs=["commit"],
)
async def large_row(session: Session) -> str | None:
    limit = session.plan.text.max_length or 1024 * 1024
    head = session.text("large-")
    size = min(limit, 1024 * 1024)
    await _round_trip(
        session, "large", head + ("0123456789abcdef" * (size // 16 + 1))[: size - len(head)]
    )
    return None if size == 1024 * 1024 else f"{size:,} characters: the field holds no more"


@check(
    "non-ascii-text",
    "text beyond ASCII (accents, CJK, emoji, combining marks, right-to-left) round-trips unchanged",
    _ANSWERS + " (JSON as the engine writes it)",
    needs=["commit"],
)
async def non_ascii_text(session: Session) -> str | None:
    sample = "Ünïcödé ✓ 漢字 🎉 e\u0301 שלום"
    value = session.text("unicode ") + sample
    limit = session.plan.text.max_length
    await _round_trip(session, "unicode", value[:limit] if limit else value)
    return None


@check(
    "answers-within-deadline",
    "every request of the run is answered before the connector's deadline (--request-timeout)",
    'README, "Configuration" (--request-timeout) and "Health and metrics" (a handler that hangs)',
)
async def answers_within_deadline(session: Session) -> str | None:
    late = [
        reply
        for reply in session.replies
        if reply.status == 504 or reply.seconds >= session.deadline
    ]
    if late:
        slowest = max(late, key=lambda reply: reply.seconds)
        raise Violation(
            f"{len(session.replies)} requests; the slowest: {describe(slowest.sent)}",
            f"{len(late)} answered late or 504, e.g. {slowest.shown(160)} after "
            f"{slowest.seconds:.1f} s",
            f"every answer within {session.deadline:g} s",
            "bound every database call (a statement timeout) so a handler answers, even with "
            "an error, before the deadline",
        )
    if not session.replies:
        return "no request was sent: run it with the other checks"
    slowest = max(session.replies, key=lambda reply: reply.seconds)
    return f"slowest {slowest.seconds * 1000:.0f} ms ({slowest.sent.get('type')}) of {len(session.replies)}"
