"""The serving fast path: requests started from the parsed bytes, each in a
task of its own, our own text frames, and coalesced writes."""

from __future__ import annotations

import asyncio
import contextvars
import json
import sys
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from connector import DataSource, RequestContext
from connector.daemon.tasks import start_task
from connector.daemon.transport import (
    CoalescingClientConnection,
    MaskKeys,
    _CoalescingTransport,
    masked_text_frame,
)
from connector.dev.engine import DevEngine
from connector.wire.frames import encode_frame
from tests.helpers import API_KEY, scripted_engine, signed_frame
from tests.test_daemon import connector_running

LOAD = {"type": "load", "model": "task", "id": "t1"}


class _TaskBound(DataSource):
    """What handlers do with their task: a timeout of their own, and the task
    as an identity (anyio's cancel scopes, a task-scoped session)."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[object, object]] = {}

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        before = asyncio.current_task()
        if id.startswith("timeout"):
            try:
                async with asyncio.timeout(0.1):
                    await asyncio.sleep(5)
            except TimeoutError:
                return {"id": id, "timed_out": True}
        await asyncio.sleep(0.01)
        self.tasks[id] = (before, asyncio.current_task())
        return {"id": id, "timed_out": False}


async def test_a_handler_owns_its_task_from_its_first_step() -> None:
    """A handler's asyncio.timeout cancels the handler, not the connection's
    reader, and its current task stays the same object across its waits.
    (Run on the reader's task until its first wait, a request's timeout used
    to cancel the reader: the connector stopped and the handler slept on.)"""
    source = _TaskBound()
    async with (
        DevEngine(API_KEY) as engine,
        connector_running(engine.base_url, source, api_key=API_KEY),
    ):
        timed = await asyncio.wait_for(engine.request({**LOAD, "id": "timeout1"}), 3)
        assert (timed.status, timed.json()["row"]["timed_out"]) == (200, True)
        # Still serving: the timeout ended the handler, not the connection.
        answers = await asyncio.wait_for(
            asyncio.gather(*(engine.request({**LOAD, "id": f"r{i}"}) for i in range(20))), 10
        )
        assert [a.status for a in answers] == [200] * 20
    assert all(before is after for before, after in source.tasks.values())
    assert len({id(before) for before, _ in source.tasks.values()}) == len(source.tasks)


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


async def test_writes_in_one_turn_leave_together_in_order() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())
    for part in (b"a", b"bb", b"ccc"):
        transport.write(part)
    assert inner.writes == [] and transport.get_write_buffer_size() == 6
    await asyncio.sleep(0)
    assert inner.writes == [b"abbccc"]
    # With nothing else expected, a write goes out at once...
    transport.more_expected = lambda: False
    transport.write(b"now")
    assert inner.writes[-1] == b"now"
    # ...but never ahead of bytes already held.
    transport.more_expected = lambda: True
    transport.write(b"1")
    transport.more_expected = lambda: False
    transport.write(b"2")
    assert inner.writes[-1] == b"now"
    transport.close()  # close sends what is held first
    assert inner.writes[-1] == b"12" and inner.closed


async def test_answers_written_while_received_bytes_are_handled_leave_at_the_end() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())
    transport.more_expected = lambda: False  # even a lone answer waits for the batch's end
    transport.batching = True
    for part in (b"1", b"22", b"333"):
        transport.write(part)
    assert inner.writes == []
    transport.batching = False
    transport.flush()
    assert inner.writes == [b"122333"]
    await asyncio.sleep(0)
    assert inner.writes == [b"122333"]  # nothing left for a later turn


async def test_abort_drops_held_writes() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"lost")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.writes == [] and inner.aborted


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 1024 * 1024 + 3])
def test_our_text_frames_read_back_as_sent(size: int) -> None:
    """A server's own parser reads our frames: masked, final, text, every length form."""
    payload = bytes(i % 251 for i in range(size))
    keys = MaskKeys()
    server = ServerProtocol(state=State.OPEN, max_size=None)
    server.receive_data(masked_text_frame(payload, keys.take()) * 2)
    events = server.events_received()
    assert len(events) == 2
    for event in events:
        assert isinstance(event, Frame)
        assert (event.opcode, event.fin, bytes(event.data)) == (Opcode.TEXT, True, payload)
    assert server.data_to_send() == []  # no protocol error: nothing to answer


def test_mask_keys_are_fresh_across_the_pool() -> None:
    keys = MaskKeys()
    taken = [keys.take() for _ in range(3000)]  # three refills of the 4 KiB pool
    assert all(len(key) == 4 for key in taken)
    assert len(set(taken)) > 2900  # random 32-bit keys: a few repeats at most


class _Gated(DataSource):
    """Holds every load until ``release``, recording the order calls started in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.running = self.peak = 0
        self.release = asyncio.Event()

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        self.started.append(id)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return {"id": id}


async def test_requests_beyond_the_free_slots_wait_in_order() -> None:
    """A burst larger than --max-in-flight: the first requests start from the
    parsed bytes, the rest wait in websockets' queue, and every one starts in
    the order it was sent, within the limit, and is answered once."""
    source = _Gated()
    ids = [f"r{i}" for i in range(40)]
    answers: list[str] = []
    done = asyncio.Event()

    async def engine(ws: ServerConnection) -> None:
        await ws.recv()  # register
        await ws.send(json.dumps({"type": "ready", "protocolVersion": 1}))
        # One burst: every frame is written before the connector answers any.
        burst = [encode_frame(signed_frame({**LOAD, "id": i}, request_id=i)) for i in ids]
        for frame in burst:
            await ws.send(frame)
        while len(answers) < len(ids):
            answers.append(json.loads(await ws.recv())["id"])
        done.set()
        await ws.wait_closed()

    async with (
        scripted_engine(engine) as base_url,
        connector_running(base_url, source, wait_ready=False, api_key=API_KEY, max_in_flight=3),
    ):
        await asyncio.wait_for(_until(lambda: len(source.started) >= 3), 10)
        await asyncio.sleep(0.1)
        assert len(source.started) == 3  # the limit holds while they hang
        source.release.set()
        await asyncio.wait_for(done.wait(), 10)
    assert source.started == ids
    assert sorted(answers) == sorted(ids) and len(set(answers)) == len(ids)
    assert source.peak == 3


async def test_a_frame_left_to_the_reader_holds_back_every_later_one() -> None:
    """Order on the wire is order of service: once a frame waits in
    websockets' queue, later ones queue behind it instead of starting."""
    offered: list[bytes] = []

    def take(data: bytes) -> bool:
        offered.append(data)
        return len(offered) > 1  # the first cannot start at once

    connection = CoalescingClientConnection(
        ClientProtocol(parse_uri("ws://engine.invalid/"), state=State.OPEN)
    )
    connection.connection_made(RecordingTransport())
    connection.response = Response(101, "Switching Protocols", Headers())  # past the handshake
    assert connection.deliver_directly(take)
    for text in (b"1", b"2", b"3"):
        connection.process_event(Frame(Opcode.TEXT, text))
    assert offered == [b"1"]
    assert [await connection.recv(decode=False) for _ in range(3)] == [b"1", b"2", b"3"]
    connection.process_event(Frame(Opcode.TEXT, b"4"))  # the queue is empty again
    assert offered == [b"1", b"4"]
    connection.deliver_directly(None)
    connection.process_event(Frame(Opcode.TEXT, b"5"))
    assert offered == [b"1", b"4"] and await connection.recv(decode=False) == b"5"


class _LapsedGate:
    """The HA gate of a lease that just lapsed: ``confirm`` waits for the
    renewal, which sets the flag and then wakes it, as the leader lock does."""

    def __init__(self) -> None:
        self.ok = True
        self.changed = asyncio.Event()

    def may_serve(self) -> bool:
        return self.ok

    async def confirm(self) -> bool:
        while not self.ok:
            await self.changed.wait()
        return True

    def renewed(self) -> None:
        self.ok = True
        self.changed.set()


async def test_a_frame_held_for_the_gate_is_not_overtaken() -> None:
    """The reader holds F1 until the lease is confirmed; F2 arrives in the
    same loop turn as the confirmation and must still start after F1."""
    source, gate = _Gated(), _LapsedGate()
    source.release.set()
    answers: list[str] = []

    async def engine(ws: ServerConnection) -> None:
        await ws.recv()  # register
        await ws.send(json.dumps({"type": "ready", "protocolVersion": 1}))
        await asyncio.sleep(0.1)
        gate.ok = False  # the lease lapses
        await ws.send(encode_frame(signed_frame({**LOAD, "id": "F1"}, request_id="F1")))
        await asyncio.sleep(0.1)  # the reader holds F1, waiting for the confirmation
        await ws.send(encode_frame(signed_frame({**LOAD, "id": "F2"}, request_id="F2")))
        asyncio.get_running_loop().call_soon(gate.renewed)
        for _ in range(2):
            answers.append(json.loads(await ws.recv())["id"])
        await ws.wait_closed()

    async with (
        scripted_engine(engine) as base_url,
        connector_running(
            base_url, source, wait_ready=False, api_key=API_KEY, max_in_flight=4
        ) as connector,
    ):
        connector._gate = gate  # what serving as the HA leader sets, before it dials
        await asyncio.wait_for(_until(lambda: len(answers) == 2), 10)
    assert source.started == ["F1", "F2"]


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)


_seen_in: contextvars.ContextVar[str] = contextvars.ContextVar("seen_in", default="caller")


async def test_a_request_task_is_current_from_its_first_step_and_keeps_its_context() -> None:
    """start_task gives the coroutine its task before any of it runs (on 3.12
    the first step runs at once): the task is current in every step, its
    context variables stay its own, and the caller's are as they were."""
    caller = asyncio.current_task()
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[Any] = []

    async def request() -> str:
        seen.append(asyncio.current_task())
        _seen_in.set("request")
        await gate
        seen.append(asyncio.current_task())
        return _seen_in.get()

    task = start_task(request())
    assert task is not None
    assert asyncio.current_task() is caller and _seen_in.get() == "caller"
    await asyncio.sleep(0)
    gate.set_result(None)
    assert await task == "request" and seen == [task, task]
    assert _seen_in.get() == "caller"


async def test_a_request_that_never_waits_is_done_in_its_first_step_where_python_can(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On 3.12 and later the first step runs at once: a request that never
    waits is answered before start_task returns, and a failure there is
    logged. On 3.11 the task runs from the next loop turn."""
    ran: list[str] = []

    async def quick() -> None:
        ran.append("answered")

    async def broken() -> None:
        raise RuntimeError("boom in the first step")

    started = start_task(quick())
    failed = start_task(broken())
    if sys.version_info >= (3, 12):
        assert started is None and failed is None and ran == ["answered"]
        assert "a request failed in its first step" in caplog.text
        assert "boom in the first step" in caplog.text
    else:
        assert started is not None and failed is not None and ran == []
        await started
        assert ran == ["answered"]
        with pytest.raises(RuntimeError, match="boom in the first step"):
            await failed


async def test_socket_reads_stay_below_the_mmap_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio reads 256 KiB at a time, above glibc's mmap threshold until a larger
    block happens to be freed: then every read mapped fresh pages, two page
    faults per request. The connection reads 64 KiB at a time, whatever the
    process did before; a larger frame still arrives whole."""
    read_sizes: list[tuple[int, int]] = []  # asyncio's, then the connection's
    connection_made = CoalescingClientConnection.connection_made

    def noting_read_sizes(self: CoalescingClientConnection, transport: Any) -> None:
        before = transport.max_size
        connection_made(self, transport)
        read_sizes.append((before, transport.max_size))

    monkeypatch.setattr(CoalescingClientConnection, "connection_made", noting_read_sizes)
    async with (
        DevEngine(API_KEY) as engine,
        connector_running(engine.base_url, _TaskBound(), api_key=API_KEY),
    ):
        assert read_sizes == [(256 * 1024, 64 * 1024)]
        body = {"type": "load", "model": "task", "id": "x" * (300 * 1024)}
        result = await engine.request(body)
        assert result.status == 200 and json.loads(result.body)["row"] is not None
