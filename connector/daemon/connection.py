"""How does one socket serve? Dial out, register, serve requests, drain.

A :class:`Connection` lives for one socket. It drives a sans-I/O
:class:`~connector.wire.session.ClientSession` with the socket's bytes:
opens the WebSocket with the two subprotocols, checks the echoed one, sends
``register``, waits (bounded) for ``ready``, then reads frames and serves each
request concurrently, at most ``max_in_flight`` at a time: when every slot is
taken it stops reading, so the socket's own flow control pushes back on the
engine.

It ends by raising a :class:`~connector.errors.ConnectFailure` that says why,
which the supervisor turns into a reconnect decision.

Nothing it writes can wait forever. An engine that stops reading fills the
socket's buffers; websockets' keepalive cannot notice (its ping waits behind
the blocked writes), so the transport watches for writes that make no
progress for the keepalive bound (``ping_interval + ping_timeout``) and the
connection is then replaced (``write_stalled``). Every send has the same
deadline, and so does the close: a stopping connector ends on time whatever
the socket does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any, Final, NoReturn, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from ..errors import ConnectFailure, ConnectionLost, describe_error
from ..ops.status import ConnectorStatus, Observer, State, announces_starts
from ..serve.answer import Answer, error_answer
from ..serve.dispatcher import Dispatcher
from ..wire.frames import RequestFrame, encode_response
from ..wire.session import (
    CLIENT_NAME,
    TOO_BIG_CODE,
    ClientSession,
    Ended,
    EngineError,
    Event,
    Ignored,
    Invalid,
    Ready,
    Request,
    closed,
    rejection,
    subprotocols_for,
)
from ..wire.signing import header_value
from .config import Config
from .failures import failure_reason
from .tasks import start_task
from .transport import CoalescingClientConnection

__all__ = ["DRAINING", "Connection", "InFlight", "ServingGate", "open_websocket"]

log = logging.getLogger("connector.connection")
request_log = logging.getLogger("connector.requests")

# websockets logs handshake headers at DEBUG, and the key rides in one of
# them; its logger is pinned to INFO so no log level can reveal it.
_transport_log = logging.getLogger("connector.websockets")
_transport_log.setLevel(logging.INFO)

DRAINING: Final = "source_connector_draining"  # a retryable 503: this connector is stopping


class ServingGate(Protocol):
    """May this replica serve now? The HA lock while leading (see :mod:`.ha`)."""

    def may_serve(self) -> bool: ...

    async def confirm(self) -> bool:
        """Wait until serving may go on; False once it may not (the lock is lost)."""
        ...


class Slots:
    """At most ``limit`` requests at once; a free slot is taken without a coroutine.

    (asyncio.Semaphore's ``acquire()`` is a coroutine call per request, on
    the hottest path of the connector.)
    """

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take_now(self) -> bool:
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        while self.free == 0:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
        self.free -= 1

    def give(self) -> None:
        self.free += 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class InFlight:
    """The handler calls under way, shared by every connection of a connector.

    Kept across reconnects on purpose: a request still running when its
    socket drops finishes anyway, and the engine's retry (same
    ``webhook-id``) picks up its answer from the dispatcher's replay cache.
    Every request takes a slot before it starts and gives it back when done.
    """

    def __init__(self, limit: int, status: ConnectorStatus) -> None:
        self.limit = limit
        self.slots = Slots(limit)
        self.tasks: set[asyncio.Task[None]] = set()
        self._status = status

    def track(self, task: asyncio.Task[Any]) -> None:
        """Hand a started request's task (and its slot) over; the slot is released when done."""
        self.tasks.add(task)
        self._status.in_flight = len(self.tasks)
        task.add_done_callback(self._done)

    def abandon(self) -> None:
        """Cancel every call under way, without waiting for them."""
        for task in list(self.tasks):
            task.cancel()

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self._status.in_flight = len(self.tasks)
        self.slots.give()

    async def drain(self, timeout: float, *, cancel_wait: float = 1.0) -> int:
        """Wait up to ``timeout`` s for running calls; cancel the rest, and
        wait up to ``cancel_wait`` s for them to end. Returns how many were cancelled."""
        if not self.tasks:
            return 0
        _, pending = await asyncio.wait(set(self.tasks), timeout=max(timeout, 0.0))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=max(cancel_wait, 0.001))
        return len(pending)


async def open_websocket(
    config: Config, *, max_size: int | None, max_queue: int = 16, coalesce: bool = False
) -> ClientConnection:
    """The upgrade, with the key only in the subprotocol offer; raises a
    :class:`~connector.errors.ConnectFailure` that says why it failed."""
    try:
        return await connect(
            config.url,
            subprotocols=[Subprotocol(p) for p in subprotocols_for(config.api_key)],
            compression="deflate" if config.compression else None,
            open_timeout=config.open_timeout,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=5,
            max_size=max_size,
            max_queue=max_queue,
            user_agent_header=CLIENT_NAME,
            logger=_transport_log,
            create_connection=CoalescingClientConnection if coalesce else ClientConnection,
        )
    except InvalidStatus as error:
        response = error.response
        raise rejection(response.status_code, response.headers, response.body) from None
    except TimeoutError:
        raise ConnectionLost(
            f"timed out after {config.open_timeout:g} s opening {config.url}", code="timeout"
        ) from None
    except (OSError, WebSocketException) as error:
        raise ConnectionLost(
            f"cannot connect to {config.url}: {describe_error(error)}", code=failure_reason(error)
        ) from None


class Connection:
    """One WebSocket to the engine, from dial to close."""

    def __init__(
        self,
        config: Config,
        dispatcher: Dispatcher,
        status: ConnectorStatus,
        in_flight: InFlight,
        observer: Observer | None = None,
        *,
        gate: ServingGate | None = None,
    ) -> None:
        self._config = config
        self._gate = gate
        # None when nothing watches: the request path then calls no hook at all.
        self._observer = observer
        self._announces = announces_starts(observer)
        self._dispatcher = dispatcher
        self._status = status
        self._in_flight = in_flight
        self._session = ClientSession(max_message_size=config.max_message_size)
        self._ws: ClientConnection | None = None
        self._ready_at: float | None = None
        self._debug = request_log.isEnabledFor(logging.DEBUG)
        # True while the reader holds a frame it cannot start yet (the HA gate).
        self._reader_holds = False
        # The keepalive bound: no write may wait longer (see the module's docstring).
        self._send_deadline = config.ping_interval + config.ping_timeout
        # Why the connection was ended from our side, when its socket cannot say.
        self._failure: ConnectFailure | None = None

    @property
    def ready_for(self) -> float:
        return 0.0 if self._ready_at is None else time.monotonic() - self._ready_at

    async def run(self) -> None:
        """Dial, register and serve until the socket ends; raises why it ended.

        Cancelling ``run`` stops reading new frames at once; it does not touch
        calls already under way (see :meth:`close`).
        """
        config = self._config
        # websockets closes the connection (1009) for a message beyond its
        # limit, so its limit is set well above ours: frames between the two
        # are refused one by one, and the link stays up.
        hard_limit = max(4 * config.max_message_size, config.max_message_size + 1024 * 1024)
        ws = await open_websocket(
            config, max_size=hard_limit, max_queue=max(16, config.max_in_flight), coalesce=True
        )
        if isinstance(ws, CoalescingClientConnection):
            in_flight = self._in_flight.tasks
            direct = ws
            ws.hold_writes_while(lambda: len(in_flight) > 1 or direct.frames_waiting() > 0)
            ws.watch_for_stalls(self._send_deadline, self._write_stalled)
        self._ws = ws
        try:
            refused = self._session.accept(ws.subprotocol, config.url)
            if refused is not None:
                await self._end(ws, refused)
            await self._send(ws, self._session.register_text())
            await self._until_ready(ws)
            await self._serve(ws)
        except ConnectionClosed as error:
            if self._failure is not None:
                raise self._failure from None
            frame = error.rcvd or error.sent
            failure = closed(
                None if frame is None else frame.code,
                "" if frame is None else frame.reason,
                ready_for=self.ready_for,
            )
            if failure.code == TOO_BIG_CODE and self._observer is not None:
                self._observer.frame_rejected("oversize_closed")
            raise failure from None

    async def refuse_while_draining(self) -> None:
        """While in-flight requests finish, answer every new one 503 at once.

        Run after :meth:`run` was cancelled (on SIGTERM, or when the HA lock
        is lost) and until :meth:`close`: no new handler call starts, and the
        engine, told ``source_connector_draining``, retries the request after
        the reconnect instead of waiting for the socket to close.
        """
        ws = self._ws
        if ws is None:
            return
        try:
            while True:
                event = self._event_of(await ws.recv())
                if isinstance(event, Request):
                    frame = event.frame
                    answer = error_answer(
                        503, DRAINING, "the connector is shutting down; retry the request"
                    )
                    if not await self._send(
                        ws, encode_response(frame.id, answer.status, answer.body)
                    ):
                        return
                    if self._observer is not None:
                        self._observer.request_done(frame, answer, 0.0)
                elif isinstance(event, Ended):
                    return
                elif not isinstance(event, Ready):
                    refusal = self._report(event)
                    if refusal is not None and not await self._send(ws, refusal):
                        return
        except ConnectionClosed:
            return

    async def close(
        self, code: int = 1000, reason: str = "connector_aborted", *, timeout: float = 5.0
    ) -> None:
        """The closing handshake, for up to ``timeout`` seconds; then the socket is dropped.

        websockets' own close timeout starts only once the close frame is
        written, which waits for the socket to drain: against an engine
        that stopped reading, that is forever.
        """
        ws = self._ws
        if ws is None:
            return
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await ws.close(code, reason)
        except TimeoutError:
            log.warning(
                "the engine did not complete the close within %g s; dropped the connection",
                timeout,
            )
            ws.transport.abort()
        except Exception:
            log.debug("close failed", exc_info=True)

    # -------------------------------------------------------------- handshake

    async def _receive(self, ws: ClientConnection) -> str | bytes:
        """The next message, with an in-flight slot taken for it (``_handle`` gives it back).

        The slot comes first: when every slot is taken, the connector stops
        reading, and the socket's flow control pushes back on the engine.
        """
        slots = self._in_flight.slots
        if not slots.take_now():
            await slots.take()
        try:
            # Text is decoded by websockets, which fails the connection (1007)
            # for invalid UTF-8; a binary message stays bytes.
            raw = await ws.recv()
            if self._failure is not None:
                # Ended from our side: what websockets still holds cannot be answered.
                raise self._failure
            # The fence: checked per frame, on the clock, so a stalled or
            # paused leader cannot serve on a lock it may have lost.
            gate = self._gate
            if gate is not None and not gate.may_serve():
                self._reader_holds = True  # later frames queue behind this one (see _take)
                try:
                    if not await gate.confirm():
                        await _read_no_more()
                finally:
                    self._reader_holds = False
            return raw
        except BaseException:
            slots.give()
            raise

    async def _until_ready(self, ws: ClientConnection) -> None:
        deadline = asyncio.get_running_loop().time() + self._config.ready_timeout
        while self._session.ready is None:
            try:
                # A request that arrives before ready is served, so it takes a slot too.
                async with asyncio.timeout_at(deadline):
                    raw = await self._receive(ws)
            except TimeoutError:
                await self._end(ws, self._session.ready_timed_out(self._config.ready_timeout))
            await self._handle(ws, self._event_of(raw))

    def _on_ready(self, event: Ready) -> None:
        frame = event.frame
        self._ready_at = time.monotonic()
        if self._observer is not None:
            self._observer.attempt_ended("ready")
        status = self._status
        status.source_id = frame.source_id
        status.organization_id = frame.organization_id
        status.environment = frame.environment
        status.set(State.READY)
        log.info(
            "ready: serving source %s (organization %s, environment %s) via %s",
            frame.source_id or "?",
            frame.organization_id or "?",
            frame.environment or "?",
            self._config.url,
        )

    # -------------------------------------------------------------- serving

    async def _serve(self, ws: ClientConnection) -> None:
        direct = ws if isinstance(ws, CoalescingClientConnection) else None
        if direct is not None and not direct.deliver_directly(lambda raw: self._take(ws, raw)):
            direct = None
        try:
            while True:  # what the direct path leaves: see _take
                raw = await self._receive(ws)
                await self._handle(ws, self._event_of(raw))
        finally:
            if direct is not None:
                direct.deliver_directly(None)

    def _take(self, ws: ClientConnection, raw: bytes) -> bool:
        """Start a request straight from the parsed bytes, if it may start now.

        Runs inside the socket's ``data_received``, so it never raises or
        waits. What it leaves (no free slot, the HA gate to confirm, the
        reader holding an earlier frame, a frame that ends the connection)
        goes to the reader in :meth:`_serve`, through websockets' queue, in
        order.
        """
        slots = self._in_flight.slots
        try:
            if self._reader_holds or not slots.take_now():
                return False
            gate = self._gate
            if gate is not None and not gate.may_serve():
                slots.give()
                return False
            # A text message's undecoded payload: the session checks its UTF-8.
            event = self._session.receive(raw, binary=False, ready_for=self.ready_for)
            if isinstance(event, Request):
                if self._start(ws, event.frame):
                    return True
            elif isinstance(event, Ended):
                slots.give()
                return False  # the reader reads it again, and ends the connection
            elif isinstance(event, Ready):
                self._on_ready(event)
            elif (refusal := self._report(event)) is not None and self._refuse(ws, refusal):
                return True  # the error frame still to send keeps the slot
        except Exception:  # one bad frame must not end the connection
            log.exception("failed to handle a frame; ignored it")
            with contextlib.suppress(Exception):
                self._rejected("malformed")
        slots.give()
        return True

    async def _handle(self, ws: ClientConnection, event: Event) -> None:
        """Act on one event; the caller took a slot, which is released unless a task keeps it."""
        took_slot = False
        try:
            if isinstance(event, Request):
                took_slot = self._start(ws, event.frame)
            elif isinstance(event, Ready):
                self._on_ready(event)
            elif isinstance(event, Ended):
                await self._end(ws, event)
            else:
                refusal = self._report(event)
                took_slot = refusal is not None and self._refuse(ws, refusal)
        except ConnectFailure:
            raise
        except Exception:  # one bad frame must not end the connection
            log.exception("failed to handle a frame; ignored it")
            self._rejected("malformed")
        finally:
            if not took_slot:
                self._in_flight.slots.give()

    def _start(self, ws: ClientConnection, frame: RequestFrame) -> bool:
        """Serve ``frame`` in a task of its own, started eagerly (see
        :mod:`.tasks`); True if the task goes on and keeps its in-flight
        slot, False if its first step answered the request."""
        if self._observer is None:
            task = start_task(self._answer(ws, frame))
        else:
            task = start_task(self._answer_observed(ws, frame, self._observer))
        if task is None:
            return False
        self._in_flight.track(task)
        return True

    def _report(self, event: EngineError | Invalid | Ignored) -> str | None:
        """Log one event; for an invalid request, the error frame that fails it."""
        if isinstance(event, Invalid):
            self._rejected(event.reason)
            what = _REFUSED[event.reason]
            if event.request_id is None:
                log.warning("ignored %s: %s", what, event.detail)
                return None
            log.warning("ignored %s: %s; failing request %s", what, event.detail, event.request_id)
            message = event.message or event.detail
            return self._session.error_text(event.request_id, message)
        elif isinstance(event, EngineError):
            if event.request_id is None:
                log.error(
                    "connection-level error from the engine: %s %s", event.code, event.message
                )
            else:
                log.warning(
                    "the engine failed request %s: %s %s",
                    event.request_id,
                    event.code,
                    event.message,
                )
        else:
            log.debug("ignored %s", event.detail)
        return None

    def _refuse(self, ws: ClientConnection, text: str) -> bool:
        """Send an error frame, for a caller holding an in-flight slot: at
        once if it can be, else from a task that keeps the slot, so refusals
        count against the same limit as answers (an engine that stops reading
        cannot make them pile up). True if the task keeps the slot."""
        payload = text.encode()
        if isinstance(ws, CoalescingClientConnection) and ws.send_text_now(payload):
            return False
        task = start_task(self._send(ws, payload))
        if task is None:
            return False
        self._in_flight.track(task)
        return True

    def _event_of(self, raw: str | bytes) -> Event:
        """What a message from ``recv()`` means (bytes: a binary message)."""
        return self._session.receive(raw, binary=isinstance(raw, bytes), ready_for=self.ready_for)

    async def _send(
        self, ws: ClientConnection, payload: str | bytes, request_id: str | None = None
    ) -> bool:
        """Send one text message within the send deadline; False (logged, for
        the answer to ``request_id``) if it was not sent."""
        try:
            async with asyncio.timeout(self._send_deadline):
                await ws.send(payload, text=True)
        except ConnectionClosed:
            if request_id is not None:
                log.warning(
                    "response to request %s lost: the connection closed first "
                    "(the engine will retry)",
                    request_id,
                )
            return False
        except TimeoutError:
            log.warning(
                "%s not sent within %g s (--ping-interval + --ping-timeout): the engine "
                "is not reading; dropped it",
                "a message" if request_id is None else f"response to request {request_id}",
                self._send_deadline,
            )
            return False
        return True

    def _write_stalled(self, unsent: int, seconds: float) -> None:
        """The transport saw no write progress for the keepalive bound: replace the link."""
        self._failure = ConnectionLost(
            f"the engine stopped reading: {unsent} bytes unsent, none delivered for "
            f"{seconds:.1f} s (--ping-interval + --ping-timeout); replacing the connection",
            ready_for=self.ready_for,
            code="write_stalled",
        )  # logged by the supervisor, with what it does next
        ws = self._ws
        if ws is not None:
            ws.transport.abort()

    async def _end(self, ws: ClientConnection, event: Ended) -> None:
        if event.close_code is not None:
            await ws.close(event.close_code, event.close_reason)
        raise event.failure

    def _rejected(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.frame_rejected(reason)

    async def _answer(self, ws: ClientConnection, frame: RequestFrame) -> Answer:
        """Serve one request and send its answer: the path when nothing observes."""
        started = time.perf_counter()
        answer = await self._dispatcher.dispatch(
            frame.method, frame.headers, frame.body, request_id=frame.id
        )
        payload = encode_response(frame.id, answer.status, answer.body)
        if not (isinstance(ws, CoalescingClientConnection) and ws.send_text_now(payload)):
            await self._send(ws, payload, frame.id)
        if self._debug:
            self._log_request(frame, answer, (time.perf_counter() - started) * 1000)
        return answer

    async def _answer_observed(
        self, ws: ClientConnection, frame: RequestFrame, observer: Observer
    ) -> Answer:
        """:meth:`_answer`, with the observers told (in this, the request's own task)."""
        started = time.perf_counter()
        if self._announces:
            observer.request_started(frame)
        try:
            answer = await self._dispatcher.dispatch(
                frame.method, frame.headers, frame.body, request_id=frame.id
            )
            payload = encode_response(frame.id, answer.status, answer.body)
            if not (isinstance(ws, CoalescingClientConnection) and ws.send_text_now(payload)):
                await self._send(ws, payload, frame.id)
        except BaseException as error:
            observer.request_abandoned(frame, error)
            raise
        seconds = time.perf_counter() - started
        if self._debug:  # inside the request's span, while tracing
            self._log_request(frame, answer, seconds * 1000)
        observer.request_done(frame, answer, seconds)
        return answer

    def _log_request(self, frame: RequestFrame, answer: Answer, milliseconds: float) -> None:
        request_log.debug(
            "request %s %s %s -> %d%s in %.1f ms%s",
            frame.id, answer.operation or "-", answer.model or "-", answer.status,
            f" {answer.error}" if answer.error else "", milliseconds,
            " (replayed)" if answer.replayed else "",
            extra={
                "request_id": frame.id, "message_id": _message_id(frame),
                "operation": answer.operation, "model": answer.model, "status": answer.status,
                "duration_ms": round(milliseconds, 3), "error_code": answer.error,
                "replayed": answer.replayed,
            },
        )  # fmt: skip


_REFUSED: Final = {
    "malformed": "a malformed frame",
    "invalid_request": "an invalid request frame",
    "oversize": "an oversize frame (--max-message-size)",
}


async def _read_no_more() -> NoReturn:
    """Hold the frame in hand unanswered (the engine retries it elsewhere) and
    read nothing more: the supervisor, told by the lock, closes this connection."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


def _message_id(frame: RequestFrame) -> str | None:
    return header_value(frame.headers, "webhook-id") or None
