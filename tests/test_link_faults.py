"""An engine that misbehaves on the socket: it stops reading, sends text
that is not UTF-8, freezes while the connector stops; and the websockets
seam that the fast path depends on."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from connector import DataSource, RequestContext
from connector.daemon import transport
from connector.ops.status import Observer
from connector.wire.frames import encode_frame
from tests.helpers import (
    API_KEY,
    connector_args,
    eventually,
    process,
    scripted_engine,
    signed_frame,
)
from tests.test_daemon import connector_running

LOAD = {"type": "load", "model": "task", "id": "t1"}
READY = json.dumps({"type": "ready", "protocolVersion": 1})
MEGABYTE = 1_000_000


class _Sized(DataSource):
    """load ``big:N`` answers a row of N bytes; anything else a small row;
    ``cancel-self`` cancels its own task."""

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        if id == "cancel-self":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(1)
        if id.startswith("big:"):
            return {"id": id, "blob": "x" * int(id.split(":", 1)[1])}
        return {"id": id}


class _Counting(Observer):
    def __init__(self) -> None:
        self.rejected = 0

    def frame_rejected(self, reason: str) -> None:
        self.rejected += 1


def _request(request_id: str, load_id: str | None = None) -> str:
    return encode_frame(signed_frame({**LOAD, "id": load_id or request_id}, request_id=request_id))


class _TwoLinks:
    """An engine whose first connection runs ``first`` and whose second one
    checks that the connector serves again."""

    def __init__(self, first: Any) -> None:
        self.first = first
        self.connections = 0
        self.served_again = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, ws: ServerConnection) -> None:
        self.connections += 1
        await ws.recv()  # register
        await ws.send(READY)
        if self.connections == 1:
            await self.first(ws)
            await self.release.wait()
            ws.transport.abort()  # it may have stopped reading: no close handshake
            return
        await ws.send(_request("after"))
        answer = json.loads(await ws.recv())
        if answer["id"] == "after" and answer["status"] == 200:
            self.served_again.set()
        await ws.wait_closed()


async def test_an_engine_that_stops_reading_is_replaced_and_the_slots_come_back(
    caplog: Any,
) -> None:
    """12 MB of answers to an engine that reads nothing: websockets' own
    keepalive never fires (its ping waits behind the writes), so the
    connector must see that its writes make no progress and replace the
    link within the keepalive bound; the requests stuck writing end and give
    their slots back, and the new link serves."""

    async def stop_reading(ws: ServerConnection) -> None:
        ws.transport.pause_reading()
        for i in range(12):
            await ws.send(_request(f"big{i}", f"big:{MEGABYTE}"))

    engine = _TwoLinks(stop_reading)
    async with (
        scripted_engine(engine) as base_url,
        connector_running(
            base_url, _Sized(), api_key=API_KEY, max_in_flight=16,
            ping_interval=0.5, ping_timeout=0.5,
        ) as connector,
    ):  # fmt: skip
        try:
            await asyncio.wait_for(engine.served_again.wait(), 30)
            in_flight = connector._in_flight
            assert in_flight is not None
            # Every slot is back but the one the new link's reader waits with.
            await eventually(lambda: in_flight.slots.free == 15 and not in_flight.tasks)
        finally:
            engine.release.set()
    assert engine.connections == 2
    stalled = [r for r in caplog.records if "stopped reading" in r.getMessage()]
    assert len(stalled) == 1 and "replacing the connection" in stalled[0].getMessage()
    assert getattr(stalled[0], "error_code", None) == "write_stalled"


async def test_refusals_take_in_flight_slots_like_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Invalid request frames with an id are refused with an error frame each.
    Against an engine that stopped reading, those refusals must count against
    --max-in-flight: the connector stops reading instead of piling up a task
    (and its memory) per refusal."""
    sent = 5000
    buffers_full = asyncio.Event()
    pause_writing = transport.CoalescingClientConnection.pause_writing

    def paused(self: transport.CoalescingClientConnection) -> None:
        pause_writing(self)
        buffers_full.set()

    monkeypatch.setattr(transport.CoalescingClientConnection, "pause_writing", paused)

    async def flood(ws: ServerConnection) -> None:
        ws.transport.pause_reading()
        for i in range(12):  # fill the socket's buffers first
            await ws.send(_request(f"big{i}", f"big:{MEGABYTE}"))
        await buffers_full.wait()  # the connector's writes wait for the socket now
        for i in range(sent):
            bad = {"type": "request", "id": f"bad{i}", "method": "GET", "url": "u",
                   "headers": {}, "body": ""}  # fmt: skip
            await ws.send(json.dumps(bad))

    engine = _TwoLinks(flood)
    observer = _Counting()
    async with scripted_engine(engine) as base_url:
        from connector import Config
        from connector.daemon.supervisor import Connector

        connector = Connector(
            Config(
                base_url=base_url, api_key=API_KEY, max_in_flight=64,
                ping_interval=2.0, ping_timeout=2.0,
            ),
            _Sized(),
            observer=observer,
        )  # fmt: skip
        running = asyncio.create_task(connector.run())
        try:
            await asyncio.wait_for(engine.served_again.wait(), 60)
        finally:
            engine.release.set()
            connector.stop()
            await asyncio.wait_for(running, 30)
    # Every slot not held by a large answer refused one frame, then reading stopped.
    assert observer.rejected <= 64, observer.rejected


@pytest.mark.parametrize("path", ["fast", "public"])
async def test_a_text_frame_that_is_not_utf8_closes_with_1007(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 6455 §8.1: invalid UTF-8 in a text message fails the connection
    (1007); nothing is answered under an id the engine never sent."""
    if path == "public":
        monkeypatch.setattr(transport._PrivateParts, "of", classmethod(lambda cls, c: None))
    received: list[str] = []
    close_codes: list[int | None] = []

    async def garbled(ws: ServerConnection) -> None:
        frame = _request("r\xe91").encode("utf-8").replace("r\xe91".encode(), b"r\xff1")
        await ws.send(frame, text=True)
        try:
            while True:
                received.append(str(await ws.recv()))
        except ConnectionClosed as closed:
            close_codes.append(None if closed.rcvd is None else closed.rcvd.code)

    engine = _TwoLinks(garbled)
    engine.release.set()
    async with (
        scripted_engine(engine) as base_url,
        connector_running(base_url, _Sized(), api_key=API_KEY),
    ):
        await asyncio.wait_for(engine.served_again.wait(), 30)
    assert close_codes == [1007]
    assert received == []


async def test_a_handler_that_cancels_its_own_task_is_answered_500(caplog: Any) -> None:
    answers: list[dict[str, Any]] = []

    async def ask(ws: ServerConnection) -> None:
        await ws.send(_request("c1", "cancel-self"))
        await ws.send(_request("c2", "fine"))
        for _ in range(2):
            answers.append(json.loads(await ws.recv()))

    engine = _TwoLinks(ask)
    async with (
        scripted_engine(engine) as base_url,
        connector_running(base_url, _Sized(), api_key=API_KEY, detailed_errors=False),
    ):
        await eventually(lambda: len(answers) == 2)
        engine.release.set()
    by_id = {a["id"]: a for a in answers}
    assert by_id["c1"]["status"] == 500
    assert json.loads(by_id["c1"]["body"])["error"] == "source_connector_handler_error"
    assert by_id["c2"]["status"] == 200
    logged = [r for r in caplog.records if "handler raised" in r.getMessage()]
    assert len(logged) == 1 and "request c1" in logged[0].getMessage()
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is asyncio.CancelledError


async def test_sigterm_ends_the_process_within_the_grace_period_against_a_frozen_engine() -> None:
    """The engine stops reading with megabytes of answers unsent; SIGTERM
    must still end the process within --shutdown-grace (systemd and
    Kubernetes kill soon after), however the socket behaves."""
    grace = 3.0
    frozen = asyncio.Event()
    release = asyncio.Event()

    async def freeze(ws: ServerConnection) -> None:
        await ws.recv()  # register
        await ws.send(READY)
        ws.transport.pause_reading()
        for i in range(12):
            await ws.send(_request(f"big{i}", f"big:{MEGABYTE}"))
        frozen.set()
        await release.wait()
        ws.transport.abort()  # a frozen engine completes no close either

    async with scripted_engine(freeze) as base_url:
        args = connector_args(
            base_url, "tests.handlers:BlockingSource", "--shutdown-grace", str(grace),
        )  # fmt: skip
        async with process(args, env={"ABLO_API_KEY": API_KEY}) as proc:
            try:
                await asyncio.wait_for(frozen.wait(), 30)
                await eventually(lambda: "ready" in proc.output(), timeout=30)
                started = time.monotonic()
                proc.signal(signal.SIGTERM)
                code = await proc.wait(timeout=grace + 20)
                took = time.monotonic() - started
            finally:
                release.set()
    assert code == 0, proc.output()
    # The stop itself is bounded by the grace period; the margin is the
    # interpreter's exit on a busy machine.
    assert took < grace + 2.5, (took, proc.output())


def test_the_installed_websockets_takes_the_fast_path() -> None:
    """Every websockets release pyproject.toml allows is one the fast path
    was written for: CI runs this on the lowest and the newest."""
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.uri import parse_uri

    from tests.test_fast_path import RecordingTransport

    async def check() -> None:
        connection = transport.CoalescingClientConnection(
            ClientProtocol(parse_uri("ws://engine.invalid/"), state=State.OPEN)
        )
        connection.connection_made(RecordingTransport())
        assert connection.fast_path
        assert connection.deliver_directly(lambda data: True)

    asyncio.run(check())


async def test_a_websockets_that_differs_is_served_on_its_public_path(
    monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A websockets whose private parts are not what the fast path expects
    (a future release): the connection uses recv() and send() throughout,
    and serves every request."""
    monkeypatch.setattr(transport, "_FRAGMENTED_SEND_NAMES", ("renamed_in_a_future_release",))
    monkeypatch.setattr(transport, "_fallback_logged", False)
    answers: list[dict[str, Any]] = []

    async def ask(ws: ServerConnection) -> None:
        for i in range(50):
            await ws.send(_request(f"p{i}"))
        for _ in range(50):
            answers.append(json.loads(await ws.recv()))

    engine = _TwoLinks(ask)
    async with (
        scripted_engine(engine) as base_url,
        connector_running(base_url, _Sized(), api_key=API_KEY, max_in_flight=4),
    ):
        await eventually(lambda: len(answers) == 50)
        engine.release.set()
    assert sorted(a["id"] for a in answers) == sorted(f"p{i}" for i in range(50))
    assert {a["status"] for a in answers} == {200}
    assert any("public send and receive path" in r.getMessage() for r in caplog.records)


def test_the_proxy_websockets_will_use_is_found_on_every_supported_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """check reports the proxy websockets dials through; the function that
    knows moved between websockets releases."""
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
    monkeypatch.setenv("no_proxy", "engine.near")
    assert transport.proxy_for("wss://engine.example/v1/source/listen") == (
        "http://proxy.internal:3128"
    )
    assert transport.proxy_for("wss://engine.near/v1/source/listen") is None
