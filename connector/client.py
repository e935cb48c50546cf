"""One connection: dial out, register, serve requests, drain.

A :class:`Connection` lives for one socket. It opens the WebSocket with the
two subprotocols, checks the echoed one, sends ``register``, waits (bounded)
for ``ready``, then reads frames and serves each ``request`` concurrently,
at most ``max_in_flight`` at a time: when every slot is taken it stops
reading, so the socket's own flow control pushes back on the engine.

It ends by raising a :class:`ConnectFailure` that says why, which the
supervisor turns into a reconnect decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any, Final, NoReturn, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from ._transport import CoalescingClientConnection
from ._version import __version__
from .config import Config
from .handler import Dispatcher, start_eagerly
from .protocol import (
    CONNECTOR_PROTOCOL_ERROR,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    ErrorFrame,
    ProtocolError,
    ReadyFrame,
    RegisterFrame,
    RequestFrame,
    ResponseFrame,
    decode_frame,
    encode_frame,
    encode_response,
    subprotocols_for,
)
from .status import ConnectorStatus, Observer, State

__all__ = [
    "AuthenticationFailed",
    "ConnectFailure",
    "Connection",
    "ConnectionLost",
    "HandshakeRejected",
    "InFlight",
    "ProtocolMismatch",
    "RateLimited",
    "ServingGate",
    "Superseded",
]

log = logging.getLogger("connector.client")
request_log = logging.getLogger("connector.requests")

# websockets logs handshake headers at DEBUG, and the key rides in one of
# them; its logger is pinned to INFO so no log level can reveal it.
_transport_log = logging.getLogger("connector.websockets")
_transport_log.setLevel(logging.INFO)

SUPERSEDED_CODE: Final = "source_connector_superseded"
CLIENT_NAME: Final = f"ablo-connector-python/{__version__}"
_ID_IN_PREFIX = re.compile(r'"id"\s*:\s*"([^"\\]{1,256})"')
_TYPE_REQUEST_IN_PREFIX = re.compile(r'"type"\s*:\s*"request"')


class ConnectFailure(Exception):
    """Why a connection ended or never became ready."""

    code: str = "connection_lost"

    def __init__(self, message: str, *, ready_for: float = 0.0) -> None:
        super().__init__(message)
        self.ready_for = ready_for


class ConnectionLost(ConnectFailure):
    """Transient: refused, reset, DNS, 5xx, closed, ping timeout. Retry on schedule."""


class HandshakeRejected(ConnectFailure):
    """The engine answered the upgrade with an HTTP error."""

    def __init__(self, status: int, engine_code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.engine_code = engine_code
        self.code = engine_code or f"http_{status}"


class AuthenticationFailed(HandshakeRejected):
    """401/403: a credential problem that retrying fast will not fix."""


class RateLimited(HandshakeRejected):
    """429: wait what ``Retry-After`` says."""

    def __init__(
        self, status: int, engine_code: str | None, message: str, retry_after: float | None
    ) -> None:
        super().__init__(status, engine_code, message)
        self.retry_after = retry_after


class Superseded(ConnectFailure):
    """A newer connector took this source; stand down."""

    code = SUPERSEDED_CODE


class ProtocolMismatch(ConnectFailure):
    """The engine speaks another protocol version."""

    code = "protocol_version_mismatch"


class ServingGate(Protocol):
    """May this replica serve now? The HA lock while leading (see :mod:`connector.ha`)."""

    def may_serve(self) -> bool: ...

    async def confirm(self) -> bool:
        """Wait until serving may go on; False once it may not (the lock is lost)."""
        ...


class InFlight:
    """The handler calls under way, shared by every connection of a connector.

    Kept across reconnects on purpose: a request still running when its
    socket drops finishes anyway, and the engine's retry (same
    ``webhook-id``) picks up its answer from the dispatcher's replay cache.
    """

    def __init__(self, limit: int, status: ConnectorStatus) -> None:
        self.limit = limit
        self.slots = asyncio.Semaphore(limit)
        self.tasks: set[asyncio.Task[None]] = set()
        self._status = status

    def track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        self._status.in_flight = len(self.tasks)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._status.in_flight = len(self.tasks)
        self.slots.release()

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for running calls; cancel the rest. Returns how many."""
        if not self.tasks:
            return 0
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        return len(pending)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None  # an HTTP date is legal but rare here; fall back to the schedule


def _engine_code(body: bytes | bytearray | None) -> str | None:
    if not body:
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if isinstance(payload, dict):
        for key in ("error", "code"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                return value[:100]
            if isinstance(value, dict) and isinstance(value.get("code"), str):
                return str(value["code"])[:100]
    return None


def _rejection(error: InvalidStatus) -> HandshakeRejected:
    response = error.response
    status = response.status_code
    code = _engine_code(response.body)
    described = f"the engine rejected the connection: HTTP {status}" + (
        f" ({code})" if code else ""
    )
    if status in (401, 403):
        return AuthenticationFailed(status, code, described)
    if status == 429:
        return RateLimited(status, code, described, _retry_after(response.headers))
    return HandshakeRejected(status, code, described)


def _closed_reason(error: ConnectionClosed) -> tuple[int | None, str]:
    frame = error.rcvd or error.sent
    if frame is None:
        return None, "connection dropped without a close frame"
    return frame.code, frame.reason


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
        self._observer = observer or Observer()
        self._dispatcher = dispatcher
        self._status = status
        self._in_flight = in_flight
        self._ws: ClientConnection | None = None
        self._ready_at: float | None = None
        self._debug = request_log.isEnabledFor(logging.DEBUG)
        self._background: set[asyncio.Task[None]] = set()

    @property
    def ready_for(self) -> float:
        return 0.0 if self._ready_at is None else time.monotonic() - self._ready_at

    async def run(self) -> None:
        """Dial, register and serve until the socket ends; raises why it ended.

        Cancelling ``run`` stops reading new frames at once; it does not touch
        calls already under way (see :meth:`close`).
        """
        ws = await self._open()
        if isinstance(ws, CoalescingClientConnection):
            in_flight = self._in_flight.tasks
            ws.hold_writes_while(lambda: len(in_flight) > 1 or _frames_waiting(ws) > 0)
        self._ws = ws
        try:
            await self._register(ws)
            await self._read_loop(ws)
        except ConnectionClosed as closed:
            raise self._classify_close(closed) from None

    async def close(self, code: int = 1000, reason: str = "connector_aborted") -> None:
        if self._ws is not None:
            try:
                await self._ws.close(code, reason)
            except Exception:
                log.debug("close failed", exc_info=True)

    # -------------------------------------------------------------- handshake

    async def _open(self) -> ClientConnection:
        config = self._config
        hard_limit = max(4 * config.max_message_size, config.max_message_size + 1024 * 1024)
        try:
            ws = await connect(
                config.url,
                subprotocols=[Subprotocol(p) for p in subprotocols_for(config.api_key)],
                compression="deflate" if config.compression else None,
                open_timeout=config.open_timeout,
                ping_interval=config.ping_interval,
                ping_timeout=config.ping_timeout,
                close_timeout=5,
                max_size=hard_limit,
                max_queue=max(16, config.max_in_flight),
                user_agent_header=config.client_name or CLIENT_NAME,
                logger=_transport_log,
                create_connection=CoalescingClientConnection,
            )
        except InvalidStatus as error:
            raise _rejection(error) from None
        except TimeoutError:
            raise ConnectionLost(
                f"timed out after {config.open_timeout:g} s opening {config.url}"
            ) from None
        except (OSError, WebSocketException) as error:
            raise ConnectionLost(f"cannot connect to {config.url}: {_describe(error)}") from None
        if ws.subprotocol != SUBPROTOCOL:
            await ws.close(1002, "subprotocol_required")
            raise ConnectionLost(
                f"the server at {config.url} did not accept the {SUBPROTOCOL} subprotocol "
                "(is the base URL an Ablo engine?)"
            )
        return ws

    async def _register(self, ws: ClientConnection) -> None:
        register = RegisterFrame(protocol_version=PROTOCOL_VERSION, client=CLIENT_NAME)
        await ws.send(encode_frame(register))
        deadline = time.monotonic() + self._config.ready_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                raw = await asyncio.wait_for(ws.recv(), max(remaining, 0.001))
            except TimeoutError:
                await ws.close(1002, "ready_timeout")
                raise ConnectionLost(
                    f"no ready frame within {self._config.ready_timeout:g} s of register"
                ) from None
            frame = self._decode(raw)
            if isinstance(frame, ReadyFrame):
                if frame.protocol_version != PROTOCOL_VERSION:
                    await ws.close(1002, "protocol_version_mismatch")
                    raise ProtocolMismatch(
                        f"the engine speaks protocol version {frame.protocol_version}; this "
                        f"connector speaks {PROTOCOL_VERSION} (upgrade ablo-connector)"
                    )
                self._on_ready(frame)
                return
            if isinstance(frame, ErrorFrame) and frame.id is None:
                await ws.close(1000, "registration_refused")
                if frame.code == SUPERSEDED_CODE:
                    raise Superseded(frame.message or "superseded before ready")
                raise ConnectionLost(f"the engine refused registration: {frame.code}")
            if frame is not None:
                self._dispatch_frame(ws, frame)

    def _on_ready(self, frame: ReadyFrame) -> None:
        self._ready_at = time.monotonic()
        self._observer.attempt_ended("ready")
        status = self._status
        status.source_id = frame.source_id
        status.organization_id = frame.organization_id
        status.environment = frame.environment
        status.set(State.READY)
        log.info(
            "ready: serving source %s (organization %s, environment %s) via %s",
            frame.source_id or "?", frame.organization_id or "?", frame.environment or "?",
            self._config.url,
        )  # fmt: skip

    # -------------------------------------------------------------- serving

    async def _read_loop(self, ws: ClientConnection) -> None:
        slots = self._in_flight.slots
        gate = self._gate
        while True:
            await slots.acquire()
            try:
                raw = await ws.recv()
                # The fence: checked per frame, on the clock, so a stalled or
                # paused leader cannot serve on a lock it may have lost.
                if gate is not None and not gate.may_serve() and not await gate.confirm():
                    await _read_no_more()
            except BaseException:
                slots.release()
                raise
            try:
                frame = self._decode(raw)
                took_slot = frame is not None and self._dispatch_frame(ws, frame)
            except ConnectFailure:
                slots.release()
                raise
            except Exception:  # one bad frame must not end the connection
                log.exception("failed to handle a frame; ignored it")
                self._observer.frame_rejected("malformed")
                took_slot = False
            if not took_slot:
                slots.release()

    def _decode(self, raw: str | bytes) -> Any:
        limit = self._config.max_message_size
        if len(raw) > limit // 4 and _encoded_size(raw) > limit:
            self._reject_oversize(raw)
            return None
        try:
            return decode_frame(raw)
        except ProtocolError as error:
            log.warning("ignored a malformed frame: %s", error)
            self._observer.frame_rejected(
                "malformed" if error.request_id is None else "invalid_request"
            )
            if error.request_id is not None and self._ws is not None:
                self._send_soon(
                    ErrorFrame(
                        id=error.request_id, code=CONNECTOR_PROTOCOL_ERROR, message=str(error)
                    )
                )
            return None

    def _reject_oversize(self, raw: str | bytes) -> None:
        size = _encoded_size(raw)
        self._observer.frame_rejected("oversize")
        prefix = raw[:512] if isinstance(raw, str) else raw[:512].decode("utf-8", "replace")
        request_id = None
        if _TYPE_REQUEST_IN_PREFIX.search(prefix):
            match = _ID_IN_PREFIX.search(prefix)
            request_id = match.group(1) if match else None
        log.warning(
            "ignored a frame of %d bytes: over the %d-byte limit (--max-message-size)%s",
            size, self._config.max_message_size,
            f"; failing request {request_id}" if request_id else "",
        )  # fmt: skip
        if request_id:
            self._send_soon(
                ErrorFrame(
                    id=request_id,
                    code=CONNECTOR_PROTOCOL_ERROR,
                    message=f"request frame of {size} bytes exceeds the connector's "
                    f"{self._config.max_message_size}-byte limit",
                )
            )

    def _dispatch_frame(self, ws: ClientConnection, frame: Any) -> bool:
        """Act on one decoded frame; True when it took an in-flight slot."""
        if isinstance(frame, RequestFrame):
            task = start_eagerly(self._serve(ws, frame))
            if task is None:
                return False  # answered already
            self._in_flight.track(task)
            return True
        if isinstance(frame, ErrorFrame):
            if frame.id is not None:
                log.warning(
                    "the engine failed request %s: %s %s", frame.id, frame.code, frame.message
                )
            elif frame.code == SUPERSEDED_CODE:
                raise Superseded(
                    frame.message or "a newer connector took this source", ready_for=self.ready_for
                )
            else:
                log.error(
                    "connection-level error from the engine: %s %s", frame.code, frame.message
                )
        elif isinstance(frame, ReadyFrame):
            log.debug("ignored a repeated ready frame")
        else:
            log.debug("ignored a %s frame, which only a connector sends", frame.type)
        return False

    async def _serve(self, ws: ClientConnection, frame: RequestFrame) -> None:
        started = time.perf_counter()
        response = await self._dispatcher.dispatch(
            frame.method, frame.headers, frame.body, request_id=frame.id
        )
        try:
            await ws.send(encode_response(frame.id, response.status, response.body))
        except ConnectionClosed:
            log.warning(
                "response to request %s lost: the connection closed first (the engine will retry)",
                frame.id,
            )
        self._observer.request_done(response, time.perf_counter() - started)
        if self._debug:
            request_log.debug(
                "request %s %s %s -> %d%s in %.1f ms%s",
                frame.id, response.operation or "-", response.model or "-", response.status,
                f" {response.error}" if response.error else "",
                (time.perf_counter() - started) * 1000, " (replayed)" if response.replayed else "",
            )  # fmt: skip

    def _send_soon(self, frame: ErrorFrame | ResponseFrame) -> None:
        ws = self._ws
        if ws is None:
            return

        async def send() -> None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode_frame(frame))

        task = asyncio.get_running_loop().create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _classify_close(self, closed: ConnectionClosed) -> ConnectFailure:
        code, reason = _closed_reason(closed)
        ready_for = self.ready_for
        if reason == SUPERSEDED_CODE:
            return Superseded("a newer connector took this source", ready_for=ready_for)
        if code == 1011 and "ping" in reason:
            return ConnectionLost("keepalive ping timed out (half-open link)", ready_for=ready_for)
        detail = f"code {code}" + (f" ({reason})" if reason else "") if code else reason
        return ConnectionLost(f"connection closed: {detail}", ready_for=ready_for)


async def _read_no_more() -> NoReturn:
    """Hold the frame in hand unanswered (the engine retries it elsewhere) and
    read nothing more: the supervisor, told by the lock, closes this connection."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


def _frames_waiting(ws: ClientConnection) -> int:
    """Frames websockets has received but the reader has not taken yet."""
    try:
        return len(ws.recv_messages.frames)
    except (AttributeError, TypeError):  # another websockets version: assume some
        return 1


def _encoded_size(raw: str | bytes) -> int:
    return len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:300]
