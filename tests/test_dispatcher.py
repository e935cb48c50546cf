"""The dispatcher: every answer of docs/protocol.md §5, sync and async handlers, replays."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import re
import sys
import threading
import time
import uuid
from typing import Any

import pytest

from connector import (
    CommitRequest,
    CommitResult,
    DataSource,
    Dispatcher,
    Event,
    EventsPage,
    ListPage,
    ListQuery,
    RequestContext,
    SourceError,
)
from connector.wire.signing import Verifier, sign_request
from tests.helpers import API_KEY, dispatch_frame, signed_frame

LOAD = {"type": "load", "model": "task", "id": "t1"}
LIST = {"type": "list", "model": "task", "query": {"where": [["done", False]], "limit": 5}}
COMMIT = {
    "type": "commit",
    "operations": [{"type": "CREATE", "model": "task", "id": "t9", "input": {"title": "x"}}],
    "correlationId": "corr_1",
}
EVENTS = {"type": "events", "cursor": "3", "limit": 2}


class AsyncSource(DataSource):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        self.calls.append(("load", (model, id, ctx.message_id)))
        return {"id": id, "model": model} if id != "missing" else None

    async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:
        self.calls.append(("list", query))
        return ListPage(rows=[{"id": "a"}], next_cursor="c2")

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        self.calls.append(("commit", commit.correlation_id))
        return CommitResult(rows=[{"id": op.id, **(op.input or {})} for op in commit.operations])

    async def events(
        self, cursor: str | None, limit: int | None, ctx: RequestContext
    ) -> EventsPage:
        self.calls.append(("events", (cursor, limit)))
        return EventsPage(
            events=[Event(id="e4", model="task", entity_id="t1", type="UPDATE", occurred_at=5)],
            next_cursor="4",
        )


class SyncSource(DataSource):
    def __init__(self) -> None:
        self.threads: set[str] = set()

    def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        self.threads.add(threading.current_thread().name)
        return {"id": id, "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
                "price": decimal.Decimal("1.50"), "uuid": uuid.UUID(int=1)}  # fmt: skip

    def list(self, model: str, query: ListQuery, ctx: RequestContext) -> list[dict[str, Any]]:
        return [{"id": "a"}, {"id": "b", "note": None}]


def dispatcher(source: DataSource, **kwargs: Any) -> Dispatcher:
    return Dispatcher(source, Verifier(API_KEY), **kwargs)


async def answer(d: Dispatcher, body: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    frame = signed_frame(body, **kwargs)
    response = await dispatch_frame(d, frame)
    return response.status, json.loads(response.body)


async def test_each_operation_async() -> None:
    source = AsyncSource()
    d = dispatcher(source)
    assert await answer(d, LOAD) == (200, {"row": {"id": "t1", "model": "task"}})
    assert await answer(d, {**LOAD, "id": "missing"}) == (200, {"row": None})
    assert await answer(d, LIST) == (200, {"rows": [{"id": "a"}], "nextCursor": "c2"})
    assert await answer(d, COMMIT) == (200, {"rows": [{"id": "t9", "title": "x"}]})
    assert await answer(d, EVENTS) == (
        200,
        {
            "events": [
                {"id": "e4", "model": "task", "entityId": "t1", "type": "UPDATE", "occurredAt": 5}
            ],
            "nextCursor": "4",
        },
    )
    query = next(arg for name, arg in source.calls if name == "list")
    assert query.limit == 5
    assert [(c.field, c.op, c.value) for c in query.where] == [("done", "=", False)]
    assert ("events", ("3", 2)) in source.calls


async def test_sync_handlers_run_off_the_event_loop_and_serialize_rich_types() -> None:
    source = SyncSource()
    d = dispatcher(source)
    status, body = await answer(d, LOAD)
    assert status == 200
    assert body["row"] == {
        "id": "t1",
        "when": "2026-01-02T03:04:05Z",
        "price": "1.50",
        "uuid": "00000000-0000-0000-0000-000000000001",
    }
    assert source.threads and threading.main_thread().name not in source.threads
    assert await answer(d, LIST) == (200, {"rows": [{"id": "a"}, {"id": "b", "note": None}]})
    d.close()


async def test_sync_handler_does_not_block_other_requests() -> None:
    gate = threading.Event()

    class Slow(DataSource):
        def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            if id == "slow":
                gate.wait(5)
            return {"id": id}

    d = dispatcher(Slow())
    slow = asyncio.create_task(answer(d, {**LOAD, "id": "slow"}))
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(answer(d, LOAD), 2) == (200, {"row": {"id": "t1"}})
    assert not slow.done()
    gate.set()
    assert await slow == (200, {"row": {"id": "slow"}})
    d.close()


@pytest.mark.parametrize(
    ("body", "code", "extra"),
    [
        (LOAD, "source_load_not_configured", {"model": "task"}),
        (LIST, "source_list_not_configured", {"model": "task"}),
        (COMMIT, "source_commit_not_configured", {}),
        (EVENTS, "source_events_not_configured", {}),
    ],
)
async def test_operation_not_implemented_is_404(body: Any, code: str, extra: Any) -> None:
    status, payload = await answer(dispatcher(DataSource()), body)
    assert status == 404
    assert payload["error"] == code
    for key, value in extra.items():
        assert payload[key] == value


async def test_method_other_than_post_is_405() -> None:
    d = dispatcher(AsyncSource())
    response = await d.dispatch("GET", {}, "{}")
    assert response.status == 405
    assert json.loads(response.body)["error"] == "method_not_allowed"


async def test_no_api_key_is_401_api_key_missing() -> None:
    d = Dispatcher(AsyncSource(), Verifier([]))
    status, payload = await answer(d, LOAD)
    assert (status, payload["error"]) == (401, "source_api_key_missing")


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h: h.pop("webhook-id"), "source_id_missing"),
        (lambda h: h.pop("webhook-timestamp"), "source_timestamp_missing"),
        (lambda h: h.update({"webhook-timestamp": "soon"}), "source_timestamp_invalid"),
        (
            lambda h: h.update({"webhook-timestamp": str(int(time.time()) - 301)}),
            "source_timestamp_expired",
        ),
        (lambda h: h.pop("webhook-signature"), "source_signature_missing"),
        (lambda h: h.update({"webhook-signature": "v1,AAAA"}), "source_signature_invalid"),
    ],
)
async def test_signature_failures_are_401_with_their_code(mutate: Any, code: str) -> None:
    source = AsyncSource()
    frame = signed_frame(LOAD)
    headers = dict(frame.headers)
    mutate(headers)
    response = await dispatcher(source).dispatch("POST", headers, frame.body)
    assert response.status == 401
    assert json.loads(response.body)["error"] == code
    assert source.calls == []


async def test_expired_timestamp_logs_the_clock_offset(caplog: pytest.LogCaptureFixture) -> None:
    d = dispatcher(AsyncSource())
    status, _ = await answer(d, LOAD, timestamp=int(time.time()) - 3600)
    assert status == 401
    warning = next(r for r in caplog.records if "clock" in r.getMessage()).getMessage()
    offset = int(re.search(r"([+-]\d+) s from this host", warning).group(1))  # type: ignore[union-attr]
    assert -3602 <= offset <= -3599
    assert "until the host clock is fixed" in warning


async def test_a_key_from_a_rotation_set_verifies() -> None:
    d = Dispatcher(AsyncSource(), Verifier(["sk_test_old", API_KEY]))
    assert (await answer(d, LOAD))[0] == 200
    assert (await answer(d, LOAD, api_key="sk_test_other"))[0] == 401


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("{not json", 400, "invalid_json"),
        ("[1, 2]", 400, "unknown_source_request"),
        ({"type": "subscribe"}, 400, "unknown_source_request"),
        ({"model": "task"}, 400, "unknown_source_request"),
        ({"type": "load", "model": "task"}, 400, "source_request_invalid"),
        (
            {"type": "list", "model": "task", "query": {"where": [["a", "~", 1]]}},
            400,
            "source_request_invalid",
        ),
        ({**COMMIT, "correlationId": None}, 400, "source_commit_requires_correlation_id"),
        ({**COMMIT, "operations": []}, 400, "source_commit_invalid"),
        (
            {**COMMIT, "operations": [{"type": "UPSERT", "model": "t"}]},
            400,
            "source_commit_invalid",
        ),
        ({**COMMIT, "intentHash": "sha256:abc"}, 400, "source_commit_invalid"),
        ({**COMMIT, "correlationId": "x" * 256}, 400, "source_commit_invalid"),
        (
            {**COMMIT, "echo": {"kind": "mysql-binlog", "payload": "p"}},
            400,
            "source_commit_invalid",
        ),
    ],
)
async def test_bad_bodies(body: Any, status: int, code: str) -> None:
    source = AsyncSource()
    got_status, payload = await answer(dispatcher(source), body)
    assert (got_status, payload["error"]) == (status, code)
    assert payload["message"]
    assert source.calls == []


class Recorder(DataSource):
    def __init__(self) -> None:
        self.commits: list[CommitRequest] = []

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        self.commits.append(commit)
        return CommitResult(rows=[])


async def test_a_commit_reaches_the_handler_with_every_field_of_the_engines_operation() -> None:
    source = Recorder()
    operation = {"type": "UPDATE", "model": "task", "id": "t1", "input": {"done": True},
                 "transactionId": "tx_1", "readAt": 2e2, "onStale": "notify",
                 "claimId": "clm_1", "bypass": True, "fenceToken": 7}  # fmt: skip
    assert (await answer(dispatcher(source), {**COMMIT, "operations": [operation]}))[0] == 200
    (received,) = source.commits[0].operations
    assert (received.claim_id, received.read_at, received.on_stale) == ("clm_1", 200, "notify")
    assert isinstance(received.read_at, int)
    # bypass and fenceToken are the engine's to settle; a source never sees them.
    assert "bypass" not in received.model_dump() and "fenceToken" not in received.model_dump()


@pytest.mark.parametrize(
    "field",
    [{"claimId": ""}, {"claimId": 5}, {"readAt": 1.5}, {"readAt": -1}, {"readAt": "5"}],
)
async def test_operation_fields_the_engine_would_refuse_are_refused(field: Any) -> None:
    source = Recorder()
    operation = {"type": "UPDATE", "model": "task", "id": "t1", **field}
    status, payload = await answer(dispatcher(source), {**COMMIT, "operations": [operation]})
    assert (status, payload["error"]) == (400, "source_commit_invalid")
    assert next(iter(field)) in payload["message"]
    assert source.commits == []


async def test_legacy_client_tx_id_is_the_correlation_id() -> None:
    source = AsyncSource()
    body = {k: v for k, v in COMMIT.items() if k != "correlationId"} | {"clientTxId": "legacy_1"}
    assert (await answer(dispatcher(source), body))[0] == 200
    assert ("commit", "legacy_1") in source.calls


class Leaky(DataSource):
    async def load(self, model: str, id: str, ctx: RequestContext) -> None:
        raise RuntimeError(f"could not connect to db-7.internal for row {id}, password {API_KEY}")


async def test_handler_exception_is_a_generic_500_with_a_reference_to_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    status, payload = await answer(dispatcher(Leaky()), LOAD, request_id="req_leak")
    assert status == 500
    assert payload["error"] == "source_connector_handler_error"
    reference = payload["reference"]
    assert re.fullmatch(r"[0-9a-f]{12}", reference)
    assert reference in payload["message"]
    for detail in ("db-7.internal", "t1", API_KEY, "RuntimeError"):
        assert detail not in json.dumps(payload), detail

    # The detail stays in the local log, on the line that names the same reference.
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert reference in record.getMessage()
    assert record.exc_info is not None and "db-7.internal" in str(record.exc_info[1])
    assert (record.reference, record.request_id, record.operation, record.model) == (  # type: ignore[attr-defined]
        reference, "req_leak", "load", "task",
    )  # fmt: skip


async def test_detailed_errors_send_the_exception_text_without_the_key() -> None:
    status, payload = await answer(dispatcher(Leaky(), detailed_errors=True), LOAD)
    assert (status, payload["error"]) == (500, "source_connector_handler_error")
    assert API_KEY not in payload["message"]
    assert "could not connect to db-7.internal for row t1" in payload["message"]
    assert payload["reference"]


async def test_handler_returning_garbage_is_500() -> None:
    class Wrong(DataSource):
        async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> int:
            return 42

        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            return {"id": object()}

    d = dispatcher(Wrong(), detailed_errors=True)
    status, payload = await answer(d, LIST)
    assert (status, payload["error"]) == (500, "source_connector_handler_error")
    assert "list returned int" in payload["message"]
    status, payload = await answer(d, LOAD)
    assert (status, payload["error"]) == (500, "source_connector_handler_error")
    assert "not JSON-serializable" in payload["message"]


async def test_source_error_sets_status_and_body() -> None:
    class Conflicting(DataSource):
        def commit(self, commit: CommitRequest, ctx: RequestContext) -> None:
            raise SourceError("idempotency_conflict", "reused key", status=409, correlationId="c")

    status, payload = await answer(dispatcher(Conflicting()), COMMIT)
    assert status == 409
    assert payload == {
        "error": "idempotency_conflict",
        "message": "reused key",
        "correlationId": "c",
    }


async def test_hung_handler_times_out_with_504_and_next_request_is_served() -> None:
    class Hangs(DataSource):
        cancelled = False

        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            if id == "hang":
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    Hangs.cancelled = True
                    raise
            return {"id": id}

    d = dispatcher(Hangs(), request_timeout=0.2)
    started = time.monotonic()
    status, payload = await answer(d, {**LOAD, "id": "hang"})
    assert (status, payload["error"]) == (504, "source_connector_timeout")
    assert time.monotonic() - started < 2
    assert Hangs.cancelled
    assert await answer(d, LOAD) == (200, {"row": {"id": "t1"}})


async def test_every_request_keeps_its_own_deadline_behind_a_slow_one() -> None:
    release = asyncio.Event()

    class Mixed(DataSource):
        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            if id == "slow":
                await release.wait()
            elif id == "hang":
                await asyncio.sleep(60)
            return {"id": id}

    timeout = 2.0
    d = dispatcher(Mixed(), request_timeout=timeout)
    slow = asyncio.create_task(answer(d, {**LOAD, "id": "slow"}))
    await asyncio.sleep(0)  # the slow request heads the deadline queue
    # Many quick requests finish while the slow one heads the deadline queue...
    quick = await asyncio.gather(*(answer(d, {**LOAD, "id": f"q{n}"}) for n in range(500)))
    assert all(status == 200 for status, _ in quick)
    assert len(d._deadlines._queue) < 100, "finished deadlines pile up behind a slow request"
    # ...the slow one, released under its deadline, is answered, and a hung
    # request behind it gets its 504 at its own deadline, not the head's.
    release.set()
    assert (await slow)[0] == 200
    hung_started = time.monotonic()
    status, payload = await answer(d, {**LOAD, "id": "hang"})
    assert (status, payload["error"]) == (504, "source_connector_timeout")
    waited = time.monotonic() - hung_started
    assert timeout * 0.95 < waited < timeout + 1.5, waited  # the margin: a busy machine
    assert len(d._deadlines._queue) == 0


async def test_a_cancelled_request_is_not_mistaken_for_a_timeout() -> None:
    class Hangs(DataSource):
        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            await asyncio.sleep(60)
            return {}

    d = dispatcher(Hangs(), request_timeout=5)
    task = asyncio.create_task(answer(d, LOAD))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(d._deadlines._queue) == 0


async def test_authorize_result_reaches_the_handler_and_can_refuse() -> None:
    seen: list[Any] = []

    class Guarded(DataSource):
        async def authorize(self, ctx: RequestContext) -> dict[str, str]:
            if ctx.scope and ctx.scope.organization_id == "org_evil":
                raise SourceError("source_forbidden", "organization not served", status=403)
            return {"tenant": "acme"}

        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            seen.append(ctx.auth)
            return {"id": id}

    d = dispatcher(Guarded())
    assert (await answer(d, LOAD))[0] == 200
    assert seen == [{"tenant": "acme"}]
    status, payload = await answer(d, {**LOAD, "scope": {"organizationId": "org_evil"}})
    assert (status, payload["error"]) == (403, "source_forbidden")


async def test_scopes_refuse_an_operation_with_required_and_granted() -> None:
    class ReadOnly(AsyncSource):
        def scopes(self, ctx: RequestContext) -> set[str]:
            return {"load", "list"}

    source = ReadOnly()
    d = dispatcher(source)
    assert (await answer(d, LOAD))[0] == 200
    status, payload = await answer(d, COMMIT)
    assert status == 403
    assert payload["error"] == "source_forbidden"
    assert payload["required"] == "commit"
    assert payload["granted"] == ["list", "load"]
    assert not any(name == "commit" for name, _ in source.calls)


async def test_context_carries_verified_identity_scope_and_headers() -> None:
    captured: list[RequestContext] = []

    class Capture(DataSource):
        async def load(self, model: str, id: str, ctx: RequestContext) -> None:
            captured.append(ctx)

    frame = signed_frame(
        {**LOAD, "scope": {"participantId": "p1", "requiredSyncGroups": ["g"]}},
        message_id="msg_ctx",
    )
    await dispatch_frame(dispatcher(Capture()), frame)
    (ctx,) = captured
    assert ctx.message_id == "msg_ctx"
    assert ctx.operation == "load"
    assert ctx.request_id == frame.id
    assert abs(ctx.signed_at - time.time()) < 5
    assert ctx.scope is not None and ctx.scope.participant_id == "p1"
    assert ctx.scope.required_sync_groups == ["g"]
    assert ctx.headers["webhook-id"] == "msg_ctx"


class Counting(DataSource):
    def __init__(self, delay: float = 0.0, fail_first: bool = False) -> None:
        self.runs = 0
        self.delay = delay
        self.fail_first = fail_first

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        self.runs += 1
        await asyncio.sleep(self.delay)
        if self.fail_first and self.runs == 1:
            raise RuntimeError("transient")
        return CommitResult(rows=[{"run": self.runs}])

    async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:
        self.runs += 1
        await asyncio.sleep(self.delay)
        return ListPage(rows=[{"run": self.runs}])


async def test_concurrent_replays_share_one_handler_run() -> None:
    source = Counting(delay=0.2)
    d = dispatcher(source)
    frames = [signed_frame(COMMIT, message_id="msg_dup", request_id=f"r{i}") for i in range(10)]
    responses = await asyncio.gather(*(dispatch_frame(d, f) for f in frames))
    assert source.runs == 1
    assert sorted(r.replayed for r in responses) == [False] + [True] * 9
    assert {r.body for r in responses} == {
        json.dumps({"rows": [{"run": 1}]}, separators=(",", ":"))
    }


async def test_a_later_replay_gets_the_stored_answer() -> None:
    source = Counting()
    d = dispatcher(source)
    first = await d.dispatch("POST", *_signed(COMMIT, "msg_again"))
    second = await d.dispatch("POST", *_signed(COMMIT, "msg_again"))
    assert source.runs == 1
    assert (first.status, first.body, first.replayed) == (200, second.body, False)
    assert second.replayed


async def test_a_failed_answer_is_not_replayed() -> None:
    source = Counting(fail_first=True)
    d = dispatcher(source)
    first = await d.dispatch("POST", *_signed(COMMIT, "msg_retry"))
    second = await d.dispatch("POST", *_signed(COMMIT, "msg_retry"))
    assert (first.status, second.status) == (500, 200)
    assert source.runs == 2


async def test_kept_commit_answers_are_bounded_by_bytes_and_freed_without_traffic() -> None:
    from connector.serve.replay import ENTRY_OVERHEAD

    source = Counting()
    body_size = sys.getsizeof(json.dumps({"rows": [{"run": 20}]}, separators=(",", ":")))
    d = dispatcher(source, replay_memory=5 * (body_size + ENTRY_OVERHEAD), replay_window=0.3)
    for i in range(20):
        await d.dispatch("POST", *_signed(COMMIT, f"msg_{i}"))
    assert d.replay_entries == 5 and d.replay_bytes <= 5 * (body_size + ENTRY_OVERHEAD)
    again = await d.dispatch("POST", *_signed(COMMIT, "msg_19"))  # the newest is kept
    assert again.replayed and source.runs == 20
    await asyncio.sleep(0.5)  # no request in between: the expiry timer frees them
    assert d.replay_entries == 0 and d.replay_bytes == 0


async def test_the_replay_budget_counts_what_answers_occupy_not_their_length() -> None:
    class Wide(DataSource):
        async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
            return CommitResult(rows=[{"id": "r", "text": "🚀" * 10_000}])

    d = dispatcher(Wide(), replay_memory=100_000)
    for i in range(10):
        await d.dispatch("POST", *_signed(COMMIT, f"msg_wide_{i}"))
    # Each answer is about 10,000 characters but 40,000 bytes of memory: two fit.
    assert d.replay_entries == 2 and d.replay_bytes <= 100_000


async def test_read_answers_are_not_kept_but_a_running_read_is_shared() -> None:
    source = AsyncSource()
    d = dispatcher(source)
    await d.dispatch("POST", *_signed(LOAD, "msg_read"))
    assert d.replay_entries == 0
    again = await d.dispatch("POST", *_signed(LOAD, "msg_read"))
    assert not again.replayed and [c[0] for c in source.calls] == ["load", "load"]

    slow = Counting(delay=0.2)
    d = dispatcher(slow)
    copies = await asyncio.gather(*(d.dispatch("POST", *_signed(LIST, "msg_l")) for _ in range(3)))
    assert sorted(a.replayed for a in copies) == [False, True, True] and slow.runs == 1
    assert {a.body for a in copies} == {'{"rows":[{"run":1}]}'}


async def test_a_cancelled_first_copy_lets_the_duplicate_run() -> None:
    source = Counting(delay=0.3)
    d = dispatcher(source)
    first = asyncio.create_task(d.dispatch("POST", *_signed(COMMIT, "msg_cancel")))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(d.dispatch("POST", *_signed(COMMIT, "msg_cancel")))
    await asyncio.sleep(0.05)
    first.cancel()
    response = await second
    assert response.status == 200
    assert source.runs == 2


def _signed(body: Any, message_id: str) -> tuple[dict[str, str], str]:
    text = json.dumps(body)
    return sign_request(API_KEY, message_id, text), text


class Unruly(DataSource):
    """Raises what a handler should not, in both kinds of method."""

    def __init__(self, what: BaseException) -> None:
        self.what = what

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        raise self.what

    def list(self, model: str, query: ListQuery, ctx: RequestContext) -> list[Any]:
        raise self.what


@pytest.mark.parametrize(
    "what",
    [SystemExit(0), SystemExit(78), KeyboardInterrupt(), asyncio.CancelledError()],
    ids=["exit0", "exit78", "interrupt", "own-cancel"],
)
async def test_no_exception_a_handler_raises_escapes_the_dispatcher(what: BaseException) -> None:
    d = dispatcher(Unruly(what))
    for body in (LOAD, LIST):
        status, payload = await answer(d, body)
        assert (status, payload["error"]) == (500, "source_connector_handler_error"), body


@pytest.mark.parametrize(
    "error",
    [
        SourceError("conflict", "row changed", status=409, etag=b"\xff\xfe"),
        SourceError("conflict", "row changed", status=409, when=object()),
        SourceError("odd", "status out of range", status=700),
        SourceError("odd", "not an error status", status=200),
    ],
)
async def test_a_source_error_that_cannot_be_sent_answers_500(error: SourceError) -> None:
    class Raising(DataSource):
        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            raise error

    status, payload = await answer(dispatcher(Raising()), LOAD)
    assert (status, payload["error"]) == (500, "source_connector_handler_error")


async def test_a_handler_that_swallows_its_cancellation_still_answers_504() -> None:
    class Stubborn(DataSource):
        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                await asyncio.sleep(0.3)  # carries on regardless
            return {"id": id}

    status, payload = await answer(dispatcher(Stubborn(), request_timeout=0.2), LOAD)
    assert (status, payload["error"]) == (504, "source_connector_timeout")


async def test_answer_objects_inside_a_mapping_go_out_camel_case() -> None:
    from connector import Delta

    class Mapped(DataSource):
        async def commit(self, commit: CommitRequest, ctx: RequestContext) -> dict[str, Any]:
            return {"deltas": [Delta(model="task", id="t1", type="UPDATE", transaction_id="tx")]}

        async def events(
            self, cursor: str | None, limit: int | None, ctx: RequestContext
        ) -> dict[str, Any]:
            event = Event(id="e1", model="task", entity_id="t1", type="UPDATE", occurred_at=5)
            return {"events": [event], "nextCursor": "1"}

    d = dispatcher(Mapped())
    status, payload = await answer(d, COMMIT)
    assert (status, payload) == (
        200,
        {"deltas": [{"model": "task", "id": "t1", "type": "UPDATE", "transactionId": "tx"}]},
    )
    status, payload = await answer(d, EVENTS)
    assert payload["events"][0]["entityId"] == "t1" and "entity_id" not in payload["events"][0]


# ------------------------------------------------------------ model names


DECLARED: dict[str, str | None] = {"workItems": "WorkItem", "task": None}


class Declared(DataSource):
    """Declares its models; records what every hook and method was given."""

    model_names = DECLARED

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def authorize(self, ctx: RequestContext) -> None:
        self.seen.append(("authorize", getattr(ctx.request, "model", None)))

    def scopes(self, ctx: RequestContext) -> None:
        self.seen.append(("scopes", getattr(ctx.request, "model", None)))

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        self.seen.append(("load", model))
        return {"id": id}

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        self.seen.append(("commit", [op.model for op in commit.operations]))
        self.seen.append(("hint", commit.model))
        self.seen.append(("hash", commit.effective_intent_hash))
        return CommitResult(rows=[])


@pytest.mark.parametrize("sent", ["workItems", "workitems", "WorkItem", "workitem"])
async def test_a_declared_model_answers_to_its_aliases_under_its_declared_name(sent: str) -> None:
    from connector.wire.bodies import Operation, operations_intent_hash

    source = Declared()
    d = dispatcher(source)
    d_answer = await dispatch_frame(d, signed_frame({"type": "load", "model": sent, "id": "w1"}))
    assert d_answer.status == 200 and d_answer.model == "workItems"  # what logs and metrics see
    operations = [
        {"type": "UPDATE", "model": sent, "id": "w1", "input": {"x": 1}},
        {"type": "DELETE", "model": "task", "id": "t1"},
    ]
    body = {**COMMIT, "model": sent, "operations": operations}
    assert (await answer(d, body))[0] == 200
    sent_hash = operations_intent_hash([Operation.model_validate(op) for op in operations])
    assert source.seen == [
        ("authorize", "workItems"), ("scopes", "workItems"), ("load", "workItems"),
        ("authorize", "workItems"), ("scopes", "workItems"),
        ("commit", ["workItems", "task"]), ("hint", "workItems"),
        ("hash", sent_hash),  # the operations as the engine sent them
    ]  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        {"type": "load", "model": "WORKITEMS", "id": "w1"},
        {
            **COMMIT,
            "operations": [
                {"type": "DELETE", "model": "task", "id": "1"},
                {"type": "DELETE", "model": "WORKITEMS", "id": "2"},
            ],
        },
        {**COMMIT, "model": "WORKITEMS"},
    ],
)
async def test_a_name_no_declared_model_answers_to_is_refused_before_any_hook(body: Any) -> None:
    source = Declared()
    status, payload = await answer(dispatcher(source), body)
    assert (status, payload["error"], payload["model"]) == (
        400,
        "source_unknown_model",
        "WORKITEMS",
    )
    assert "did you mean 'workItems'?" in payload["message"]
    assert source.seen == []


def test_models_that_share_a_name_are_refused_when_the_connector_starts() -> None:
    from connector import ConfigError

    class Clashing(DataSource):
        model_names = ("Task", "task")

        def load(self, model: str, id: str, ctx: RequestContext) -> None:
            return None

    with pytest.raises(ConfigError, match=r"Clashing.model_names: models 'Task' and 'task'"):
        dispatcher(Clashing())


async def test_models_known_at_run_time_are_resolved_the_same_way() -> None:
    class Reflecting(DataSource):
        def __init__(self) -> None:
            self.known: list[str] = ["task"]
            self.loaded: list[str] = []

        async def served_models(self) -> list[str]:
            return self.known

        def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            self.loaded.append(model)
            return {"id": id}

    source = Reflecting()
    d = dispatcher(source)
    assert (await answer(d, {"type": "load", "model": "Orders", "id": "1"}))[0] == 400
    source.known = ["task", "Orders"]  # a new object: checked, then used
    assert (await answer(d, {"type": "load", "model": "orders", "id": "1"}))[0] == 200
    assert source.loaded == ["Orders"]


async def test_a_source_that_declares_no_models_gets_names_as_sent() -> None:
    source = AsyncSource()
    assert (await answer(dispatcher(source), {"type": "load", "model": "AnyThing", "id": "1"}))[
        0
    ] == 200
    assert source.calls[0][1][0] == "AnyThing"


@pytest.mark.parametrize(
    ("condition", "found"),
    [
        (["title", {"a": 1}], "the condition on 'title' compares with a JSON object"),
        (["title", "=", {"a": 1}], "the condition on 'title' compares with a JSON object"),
        (
            {"field": "tags", "op": "IN", "value": [1, {"a": 1}]},
            "the condition on 'tags' compares with a list holding a JSON object",
        ),
        (["tags", "IN", [[1]]], "the condition on 'tags' compares with a list holding a list"),
    ],
)
async def test_a_where_value_of_the_wrong_kind_is_one_sentence(condition: Any, found: str) -> None:
    source = AsyncSource()
    body = {"type": "list", "model": "task", "query": {"where": [["done", False], condition]}}
    status, payload = await answer(dispatcher(source), body)
    assert (status, payload["error"]) == (400, "source_request_invalid")
    assert payload["message"] == (
        f"list.query.where.1.value: {found}; a condition's value is a string, a number, "
        "true, false or null, or a list of those for IN and NOT IN"
    )
    assert source.calls == []
