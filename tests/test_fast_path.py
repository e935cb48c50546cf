"""The serving fast path: eager request start and coalesced writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from connector import Answer, DataSource, Dispatcher, RequestContext
from connector.daemon.transport import _CoalescingTransport
from connector.serve.deadlines import start_eagerly
from connector.wire.signing import Verifier
from tests.helpers import API_KEY, signed_frame

LOAD = {"type": "load", "model": "task", "id": "t1"}


async def test_a_coroutine_that_never_waits_finishes_without_a_task() -> None:
    ran: list[str] = []

    async def quick() -> None:
        ran.append("done")

    assert start_eagerly(quick()) is None
    assert ran == ["done"]


async def test_a_coroutine_that_waits_continues_in_a_task() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[str] = loop.create_future()
    seen: list[Any] = []

    async def waits() -> None:
        seen.append("before")
        seen.append(await gate)
        await asyncio.sleep(0)  # a bare yield to the loop passes through too
        seen.append(await asyncio.sleep(0.01, "slept"))

    task = start_eagerly(waits())
    assert task is not None and seen == ["before"]
    gate.set_result("opened")
    await task
    assert seen == ["before", "opened", "slept"]


async def test_cancelling_the_task_reaches_the_coroutine() -> None:
    cleaned: list[str] = []

    async def hangs() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.append("finally")

    task = start_eagerly(hangs())
    assert task is not None
    await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled() and cleaned == ["finally"]


async def test_a_request_started_eagerly_times_out_on_its_own_task() -> None:
    class Mixed(DataSource):
        async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
            if id == "hang":
                await asyncio.sleep(60)
            return {"id": id}

    dispatcher = Dispatcher(Mixed(), Verifier(API_KEY), request_timeout=0.3)
    answers: list[Answer] = []

    async def serve(body: dict[str, Any]) -> None:
        frame = signed_frame(body)
        answers.append(await dispatcher.dispatch(frame.method, frame.headers, frame.body))

    async def reader() -> asyncio.Task[None] | None:
        # Plays the connection's reader: starts requests eagerly, on its task.
        assert start_eagerly(serve(LOAD)) is None  # answered inline
        task = start_eagerly(serve({**LOAD, "id": "hang"}))
        await asyncio.sleep(0.6)  # past the deadline: the reader must not be cancelled
        return task

    reader_task = asyncio.create_task(reader())
    hung = await reader_task
    assert not reader_task.cancelled()
    assert hung is not None and hung.done() and not hung.cancelled()
    assert [a.status for a in answers] == [200, 504]
    assert json.loads(answers[1].body)["error"] == "source_connector_timeout"


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


async def test_abort_drops_held_writes() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"lost")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.writes == [] and inner.aborted
