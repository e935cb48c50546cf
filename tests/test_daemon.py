"""The daemon against a real local engine: serving, limits, failures, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from connector import Config, ConfigError, DataSource, ListQuery, RequestContext
from connector.daemon.supervisor import Connector
from connector.dev.engine import DevEngine
from connector.ops.status import State
from connector.wire.frames import RequestFrame, ResponseFrame, decode_frame, encode_frame
from connector.wire.signing import sign_request
from examples.memory_source import MemorySource
from examples.sqlite_source import SQLiteSource
from tests.handlers import TestSource
from tests.helpers import eventually, free_port, scripted_engine

KEY = "sk_test_daemon_5f2a9c"


@contextlib.asynccontextmanager
async def engine_running(**kwargs: Any) -> AsyncIterator[DevEngine]:
    engine = DevEngine(KEY, **kwargs)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@contextlib.asynccontextmanager
async def connector_running(
    base_url: str, source: DataSource, *, wait_ready: bool = True, **settings: Any
) -> AsyncIterator[Connector]:
    settings.setdefault("api_key", KEY)
    connector = Connector(Config(base_url=base_url, **settings), source)
    task = asyncio.create_task(connector.run())
    try:
        if wait_ready:
            await asyncio.wait_for(connector.wait_ready(), 10)
        yield connector
    finally:
        connector.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


@pytest.mark.parametrize("source_class", [SQLiteSource, MemorySource])
async def test_round_trip_of_every_operation(source_class: type[DataSource], tmp_path: Any) -> None:
    source = (
        SQLiteSource(str(tmp_path / "t.db")) if source_class is SQLiteSource else MemorySource()
    )
    async with engine_running() as engine, connector_running(engine.base_url, source):
        created = await engine.request(
            {
                "type": "commit",
                "correlationId": "c1",
                "operations": [
                    {"type": "CREATE", "model": "note", "id": "n1", "input": {"text": "hi", "n": 3}}
                ],
            }
        )
        assert created.status == 200, created.body
        assert created.json()["rows"] == [{"id": "n1", "text": "hi", "n": 3}]

        loaded = await engine.request({"type": "load", "model": "note", "id": "n1"})
        assert (loaded.status, loaded.json()) == (200, {"row": {"id": "n1", "text": "hi", "n": 3}})
        missing = await engine.request({"type": "load", "model": "note", "id": "nope"})
        assert missing.json() == {"row": None}

        listed = await engine.request(
            {"type": "list", "model": "note", "query": {"where": [["text", "hi"]]}}
        )
        assert listed.status == 200
        assert [row["id"] for row in listed.json()["rows"]] == ["n1"]

        replay = await engine.request(
            {
                "type": "commit",
                "correlationId": "c1",
                "operations": [
                    {"type": "CREATE", "model": "note", "id": "n1", "input": {"text": "hi", "n": 3}}
                ],
            }
        )
        assert (replay.status, replay.json()) == (200, created.json())
        conflict = await engine.request(
            {
                "type": "commit",
                "correlationId": "c1",
                "operations": [{"type": "DELETE", "model": "note", "id": "n1"}],
            }
        )
        assert conflict.status == 409
        assert conflict.json()["error"] == "idempotency_conflict"

        events = await engine.request({"type": "events", "limit": 10})
        assert events.status == 200
        notes = [e for e in events.json()["events"] if e["model"] == "note"]
        assert [(e["entityId"], e["type"], e["correlationId"]) for e in notes] == [
            ("n1", "CREATE", "c1")
        ]
        after = await engine.request({"type": "events", "cursor": events.json()["nextCursor"]})
        assert after.json()["events"] == []


class ConcurrencyProbe(DataSource):
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.calls = 0

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        self.now += 1
        self.calls += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.002)
        finally:
            self.now -= 1
        return {"id": id}


async def test_a_thousand_requests_at_once_respect_max_in_flight() -> None:
    probe = ConcurrencyProbe()
    async with (
        engine_running() as engine,
        connector_running(engine.base_url, probe, max_in_flight=16),
    ):
        results = await asyncio.gather(
            *(engine.request({"type": "load", "model": "m", "id": str(i)}) for i in range(1000))
        )
    assert [r.status for r in results] == [200] * 1000
    assert sorted(r.json()["row"]["id"] for r in results) == sorted(str(i) for i in range(1000))
    assert all(r.attempts == 1 for r in results)
    assert probe.calls == 1000
    assert probe.peak == 16


async def test_malformed_oversize_and_bad_requests_never_stop_serving(caplog: Any) -> None:
    source = TestSource()
    async with (
        engine_running() as engine,
        connector_running(engine.base_url, source, max_message_size=64 * 1024, request_timeout=0.5),
    ):

        async def served() -> None:
            result = await engine.request({"type": "load", "model": "m", "id": "ok"})
            assert (result.status, result.json()["row"]["id"]) == (200, "ok")

        await engine.send_raw("this is not json")
        await engine.send_raw(b"\xff\xfe binary garbage")
        await engine.send_raw(json.dumps({"type": "subscribe"}))
        await engine.send_raw(
            json.dumps({"type": "error", "code": "noise", "message": "connection-level"})
        )
        await served()

        # A request frame that fails validation but carries an id is failed at once.
        bad_method = json.dumps(
            {
                "type": "request",
                "id": "bad_1",
                "method": "GET",
                "url": "u",
                "headers": {},
                "body": "",
            }
        )
        answer = await engine.exchange(bad_method, "bad_1", timeout=5)
        assert answer.type == "error" and answer.code == "source_connector_protocol_error"
        await served()

        # Oversize: logged, failed by id, connection kept.
        huge = RequestFrame(id="big_1", method="POST", url="u", headers={}, body="x" * (200 * 1024))
        answer = await engine.exchange(huge, "big_1", timeout=5)
        assert answer.type == "error" and "exceeds" in answer.message
        await served()

        # A bad signature is a 401 answer, not a dropped request.
        body = json.dumps({"type": "load", "model": "m", "id": "x"})
        headers = sign_request("sk_test_someone_else", "msg_forged", body)
        answer = await engine.exchange(
            RequestFrame(id="forged_1", method="POST", url="u", headers=headers, body=body),
            "forged_1",
        )
        assert isinstance(answer, ResponseFrame) and answer.status == 401
        assert json.loads(answer.body)["error"] == "source_signature_invalid"

        raised = await engine.request({"type": "load", "model": "m", "id": "boom"})
        assert (raised.status, raised.json()["error"]) == (500, "source_connector_handler_error")
        assert KEY not in raised.body

        hung = await engine.request({"type": "load", "model": "m", "id": "hang"})
        assert (hung.status, hung.json()["error"]) == (504, "source_connector_timeout")
        await served()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "malformed frame" in messages
    assert "over the 65536-byte limit" in messages
    assert "connection-level error from the engine: noise" in messages


async def test_responses_are_sent_as_handlers_finish() -> None:
    async with engine_running() as engine, connector_running(engine.base_url, TestSource()):
        slow = asyncio.create_task(engine.request({"type": "load", "model": "m", "id": "sleep:1"}))
        await asyncio.sleep(0.05)
        fast = await engine.request({"type": "load", "model": "m", "id": "quick"})
        assert fast.status == 200 and not slow.done()
        assert (await slow).status == 200


async def test_a_drop_mid_request_is_retried_with_the_same_webhook_id_and_runs_once() -> None:
    class Once(DataSource):
        def __init__(self) -> None:
            self.runs: dict[str, int] = {}

        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            self.runs[ctx.message_id] = self.runs.get(ctx.message_id, 0) + 1
            await asyncio.sleep(0.5)
            return {"id": id}

    source = Once()
    async with engine_running() as engine, connector_running(engine.base_url, source) as connector:
        pending = asyncio.create_task(engine.request({"type": "load", "model": "m", "id": "a"}))
        await eventually(lambda: bool(source.runs))
        assert engine._active is not None
        await engine._active.ws.close(1012, "restart")  # the engine side drops the link
        result = await pending
        assert result.status == 200
        assert result.attempts == 2
        assert source.runs == {result.message_id: 1}
        assert connector.status.connects == 2


async def test_two_connectors_settle_on_the_newer_one() -> None:
    async with (
        engine_running() as engine,
        connector_running(engine.base_url, TestSource()) as older,
        connector_running(engine.base_url, TestSource()) as newer,
    ):
        await eventually(lambda: older.status.state is State.STOOD_DOWN)
        assert newer.status.is_ready
        await asyncio.sleep(3)
        assert engine.attaches == 2 and engine.supersedes == 1
        assert older.status.state is State.STOOD_DOWN
        result = await engine.request({"type": "load", "model": "m", "id": "x"})
        assert result.status == 200


async def _count_attempts(handler: Any, seconds: float, **settings: Any) -> list[float]:
    """Run a connector against a misbehaving server; return when it dialed."""
    attempts: list[float] = []

    async def on_connection(ws: ServerConnection) -> None:
        attempts.append(time.monotonic())
        await handler(ws)

    async with serve(on_connection, "127.0.0.1", 0, subprotocols=["ablo.source.v1"]) as server:
        port = server.sockets[0].getsockname()[1]
        async with connector_running(
            f"http://127.0.0.1:{port}", TestSource(), wait_ready=False, **settings
        ):
            await asyncio.sleep(seconds)
    return attempts


async def test_a_server_that_drops_right_after_ready_gets_backoff_not_a_loop() -> None:
    async def ready_then_close(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(json.dumps({"type": "ready", "protocolVersion": 1}))
        await ws.close()

    schedule = (0.0, 0.02, 0.05, 0.1, 0.2)
    attempts = await _count_attempts(
        ready_then_close, 4.0, reconnect_schedule=schedule, reconnect_jitter=0.0
    )
    assert 15 <= len(attempts) <= 25
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 0.15 for gap in gaps[5:]), gaps
    # With the default schedule the same server sees four attempts in four seconds.
    attempts = await _count_attempts(ready_then_close, 4.0)
    assert 3 <= len(attempts) <= 4


async def test_a_server_that_never_says_ready_is_a_failed_attempt() -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()  # never says ready; the connector gives up and closes

    attempts = await _count_attempts(silent, 1.6, ready_timeout=0.5, reconnect_schedule=(0.0, 0.1))
    assert len(attempts) >= 3


async def test_a_server_without_the_subprotocol_is_refused() -> None:
    seen: list[str | None] = []

    async def plain(ws: ServerConnection) -> None:
        seen.append(ws.subprotocol)
        await asyncio.sleep(1)

    async with serve(plain, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connector_running(
            f"http://127.0.0.1:{port}", TestSource(), wait_ready=False, reconnect_schedule=(0.2,)
        ) as connector:
            await eventually(lambda: connector.status.last_error is not None)
            assert not connector.status.is_ready
    assert seen and seen[0] is None


async def test_a_version_mismatch_closes_with_1002() -> None:
    closes: list[tuple[int | None, str | None]] = []

    async def future_engine(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(json.dumps({"type": "ready", "protocolVersion": 2}))
        with contextlib.suppress(Exception):
            await ws.recv()
        closes.append((ws.close_code, ws.close_reason))

    async with serve(future_engine, "127.0.0.1", 0, subprotocols=["ablo.source.v1"]) as server:
        port = server.sockets[0].getsockname()[1]
        async with connector_running(
            f"http://127.0.0.1:{port}", TestSource(), wait_ready=False, reconnect_schedule=(5.0,)
        ) as connector:
            await eventually(lambda: bool(closes))
            assert connector.status.last_error == "protocol_version_mismatch"
    assert closes[0] == (1002, "protocol_version_mismatch")


async def test_rejected_key_is_retried_only_at_the_slowest_step() -> None:
    async with engine_running() as engine:
        async with connector_running(
            engine.base_url, TestSource(), wait_ready=False, api_key="sk_test_wrong_key",
            reconnect_schedule=(0.0, 0.1, 0.5), reconnect_jitter=0.0,
        ) as connector:  # fmt: skip
            await asyncio.sleep(1.3)
            assert connector.status.last_error == "source_connector_unauthenticated"
        assert 2 <= engine.rejected_handshakes <= 3


async def test_429_waits_for_retry_after() -> None:
    attempts: list[float] = []

    def limited(connection: ServerConnection, request: Any) -> Any:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            response = connection.respond(429, '{"error":"connection_limit_exceeded"}')
            response.headers["Retry-After"] = "1"
            return response
        return None

    async def ready(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(json.dumps({"type": "ready", "protocolVersion": 1}))
        await asyncio.sleep(5)

    async with serve(
        ready, "127.0.0.1", 0, subprotocols=["ablo.source.v1"], process_request=limited
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connector_running(
            f"http://127.0.0.1:{port}", TestSource(), wait_ready=False
        ) as connector:
            await asyncio.wait_for(connector.wait_ready(), 5)
    assert len(attempts) == 2
    assert 0.85 <= attempts[1] - attempts[0] <= 1.5


async def test_stop_drains_in_flight_and_closes_with_connector_aborted() -> None:
    async with engine_running() as engine:
        connector = Connector(Config(api_key=KEY, base_url=engine.base_url), TestSource())
        task = asyncio.create_task(connector.run())
        await connector.wait_ready(10)
        pending = asyncio.create_task(
            engine.request({"type": "load", "model": "m", "id": "sleep:1"})
        )
        await asyncio.sleep(0.2)
        connector.stop()
        result = await pending
        await asyncio.wait_for(task, 5)
        assert result.status == 200 and result.attempts == 1
        assert connector.status.state is State.STOPPED


async def test_cancelling_run_closes_promptly() -> None:
    async with engine_running() as engine:
        connector = Connector(Config(api_key=KEY, base_url=engine.base_url), TestSource())
        task = asyncio.create_task(connector.run())
        await connector.wait_ready(10)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 3
        await eventually(lambda: not engine.attached, timeout=5)


async def in_flight_on(
    engine: DevEngine, config: Config, source: DataSource, id: str = "hang"
) -> tuple[Connector, asyncio.Task[None], asyncio.Task[Any]]:
    """A ready connector (and its run() task) with a load of ``id`` in flight."""
    connector = Connector(config, source)
    task = asyncio.create_task(connector.run())
    await connector.wait_ready(10)
    pending = asyncio.create_task(engine.request({"type": "load", "model": "m", "id": id}))
    await eventually(lambda: connector.status.in_flight == 1)
    return connector, task, pending


async def test_cancelling_run_abandons_a_request_in_flight_at_once() -> None:
    """Cancelling run() is stop(force=True): its caller does not wait out the
    grace period for a handler whose answer has nowhere to go."""
    cancelled = asyncio.Event()

    class Source(TestSource):
        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
            try:
                return await super().load(model, id, ctx)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    async with engine_running() as engine:
        config = Config(api_key=KEY, base_url=engine.base_url, shutdown_grace=30)
        connector, task, pending = await in_flight_on(engine, config, Source())
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 5
        assert cancelled.is_set() and connector.status.state is State.STOPPED
        pending.cancel()


async def test_a_second_cancel_during_shutdown_still_closes_every_service() -> None:
    """The common "cancel, then wait at most N s" lands a second cancellation
    while run() cleans up; its ports and its probe must end all the same."""
    probes: list[float] = []

    class Source(TestSource):
        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
            try:
                await asyncio.sleep(3600)
            finally:  # a clean-up that outlives the stop
                await asyncio.sleep(10)
            return None

        async def probe(self) -> None:
            probes.append(time.monotonic())

    async with engine_running() as engine:
        health, inspector = free_port(), free_port()
        config = Config(
            api_key=KEY,
            base_url=engine.base_url,
            health_addr=f"127.0.0.1:{health}",
            inspect_addr=f"127.0.0.1:{inspector}",
            probe_interval=0.1,
        )
        _, task, pending = await in_flight_on(engine, config, Source(), "x")
        task.cancel()
        with pytest.raises((TimeoutError, asyncio.CancelledError)):
            await asyncio.wait_for(task, 0.2)  # cancels run() again, mid-drain
        assert task.done()
        calls = len(probes)
        await asyncio.sleep(0.5)  # five probe intervals
        assert len(probes) == calls
        for port in (health, inspector):
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
        again = Connector(config, TestSource())  # the same ports, as a supervising loop would
        restarted = asyncio.create_task(again.run())
        await again.wait_ready(10)
        again.stop()
        await asyncio.wait_for(restarted, 10)
        pending.cancel()


async def test_cancelling_run_while_it_drains_after_stop_still_closes_the_socket() -> None:
    """ "stop(), then cancel if it takes too long": the engine must see the
    connector go, or it keeps sending requests nobody reads."""
    async with engine_running() as engine:
        config = Config(api_key=KEY, base_url=engine.base_url, shutdown_grace=30)
        connector, task, pending = await in_flight_on(engine, config, TestSource())
        connector.stop()  # a drain of up to 28 s
        await eventually(lambda: connector.status.state is State.DRAINING)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: not engine.attached, timeout=5)
        pending.cancel()


async def test_a_cancel_while_the_probe_closes_still_reaches_the_caller() -> None:
    probe_closing = asyncio.Event()

    class Source(TestSource):
        async def probe(self) -> None:
            try:
                await asyncio.sleep(3600)  # a query under way
            finally:
                probe_closing.set()
                await asyncio.sleep(1)  # its clean-up, which the stop waits for

    connector = Connector(
        Config(api_key=KEY, base_url="http://127.0.0.1:9", probe_interval=60), Source()
    )

    async def program() -> None:
        await connector.run()
        await asyncio.sleep(3600)  # the program's own work, which a dropped cancel lets run

    task = asyncio.create_task(program())
    await eventually(lambda: connector.status.state is State.BACKOFF)
    connector.stop()
    await probe_closing.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled()


@pytest.mark.parametrize("turns", range(8))
async def test_wait_ready_never_drops_a_cancellation(turns: int) -> None:
    """Cancelled ``turns`` loop turns after the connector became ready, the
    waiter ends cancelled, wherever the cancellation lands."""
    connector = Connector(Config(api_key=KEY, base_url="http://127.0.0.1:9"), TestSource())

    async def waiter() -> None:
        await connector.wait_ready(10)
        await asyncio.sleep(3600)  # the program's own work, which a dropped cancel lets run

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    connector.status.set(State.READY)
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()


async def test_status_carries_the_ready_identity() -> None:
    async with (
        engine_running(
            source_id="src_42", organization_id="org_7", environment="production"
        ) as engine,
        connector_running(engine.base_url, TestSource()) as connector,
    ):
        status = connector.status.as_dict()
    assert status["state"] == "ready"
    assert (status["sourceId"], status["organizationId"], status["environment"]) == (
        "src_42",
        "org_7",
        "production",
    )


async def test_sync_handler_list_through_the_connector(tmp_path: Any) -> None:
    source = SQLiteSource(str(tmp_path / "x.db"))
    async with engine_running() as engine, connector_running(engine.base_url, source):
        listed = await engine.request(
            {
                "type": "list",
                "model": "task",
                "query": {"orderBy": "priority", "order": "desc", "limit": 1},
            }
        )
        page = listed.json()
        assert [row["id"] for row in page["rows"]] == ["t1"]
        nxt = await engine.request(
            {
                "type": "list",
                "model": "task",
                "query": {
                    "orderBy": "priority",
                    "order": "desc",
                    "limit": 1,
                    "cursor": page["nextCursor"],
                },
            }
        )
        assert [row["id"] for row in nxt.json()["rows"]] == ["t2"]


def test_list_query_type_is_what_handlers_receive() -> None:
    query = ListQuery.model_validate({"where": [["a", 1], ["b", "IN", [1, 2]]], "orderBy": "a"})
    assert [(c.field, c.op, c.value) for c in query.where] == [("a", "=", 1), ("b", "IN", [1, 2])]
    assert query.order_by == "a"


async def test_frames_encode_as_the_engine_expects() -> None:
    frame = decode_frame(encode_frame(ResponseFrame(id="x", status=200, body="{}")))
    assert frame == ResponseFrame(id="x", status=200, body="{}")


async def test_requests_before_ready_take_in_flight_slots_like_any_other() -> None:
    """The reference serves requests that arrive before ready; they must not
    raise --max-in-flight for good (each used to release a slot it never took)."""
    running = peak = 0

    class Counting(DataSource):
        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.3 if id.startswith("slow") else 0.01)
            running -= 1
            return {"id": id}

    def request(request_id: str) -> str:
        body = json.dumps({"type": "load", "model": "m", "id": request_id})
        headers = sign_request(KEY, f"msg_{request_id}", body)
        return encode_frame(
            RequestFrame(id=request_id, method="POST", url="u", headers=headers, body=body)
        )

    finished = asyncio.Event()
    statuses: list[int] = []

    async def engine(ws: ServerConnection) -> None:
        await ws.recv()  # register
        for i in range(20):
            await ws.send(request(f"early{i}"))
        for _ in range(20):
            statuses.append(json.loads(await ws.recv())["status"])
        await ws.send(json.dumps({"type": "ready", "protocolVersion": 1}))
        for i in range(24):
            await ws.send(request(f"slow{i}"))
        for _ in range(24):
            statuses.append(json.loads(await ws.recv())["status"])
        finished.set()
        await ws.wait_closed()

    async with (
        scripted_engine(engine) as base_url,
        connector_running(base_url, Counting(), wait_ready=False, max_in_flight=4),
    ):
        await asyncio.wait_for(finished.wait(), 20)
    assert statuses == [200] * 44
    assert peak == 4, f"{peak} handler calls ran at once with --max-in-flight 4"


async def test_a_frame_too_large_to_read_closes_the_link_which_is_redialed() -> None:
    """Up to 4x --max-message-size (at least 1 MiB more), a frame is refused alone; beyond, it
    cannot be read without buffering it, so the link closes (1009) and is redialed."""
    from connector.ops.status import Observer

    rejected: list[str] = []

    class Recording(Observer):
        def frame_rejected(self, reason: str) -> None:
            rejected.append(reason)

    async with engine_running() as engine:
        connector = Connector(
            Config(api_key=KEY, base_url=engine.base_url, max_message_size=64 * 1024),
            TestSource(),
            observer=Recording(),
        )
        errors: list[str | None] = []
        connector.status.subscribe(lambda status: errors.append(status.last_error))
        task = asyncio.create_task(connector.run())
        try:
            await engine.wait_attached(10)
            huge = RequestFrame(
                id="huge_1", method="POST", url="u", headers={}, body="x" * (1200 * 1024)
            )
            await engine.send_raw(encode_frame(huge))
            await eventually(lambda: engine.attaches == 2, timeout=10)
            assert rejected == ["oversize_closed"]
            assert "message_too_big" in errors  # the reason, until it is ready again
            result = await engine.request({"type": "load", "model": "m", "id": "after"})
            assert result.status == 200
        finally:
            connector.stop()
            await asyncio.wait_for(task, 10)


async def test_wait_ready_raises_when_the_connector_stops_before_ready() -> None:
    import socket

    from connector import ConnectorError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with engine_running() as engine:
            config = Config(api_key=KEY, base_url=engine.base_url, health_addr=f"127.0.0.1:{port}")
            connector = Connector(config, TestSource())
            task = asyncio.create_task(connector.run())
            with pytest.raises(ConnectorError, match="cannot serve health endpoints"):
                await connector.wait_ready(5)
            with pytest.raises(ConfigError):
                await task
