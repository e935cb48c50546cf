"""What does the engine do? Its side of ``ablo.source.v1``, for development and tests.

:class:`DevEngine` accepts connectors the way the Ablo engine does: it checks
the bearer subprotocol (401 otherwise), echoes only ``ablo.source.v1``,
requires ``register``, answers ``ready``, keeps one active connector per
source (a newer one supersedes the older, which is told so), and signs every
request it forwards with the API key. A request that gets no answer in time,
or whose connector drops, is retried with the **same** ``webhook-id``.

Drive it from Python (``await engine.request({...})``) or over its small
HTTP API (``POST /v1/source/requests`` with a load/list/commit/events body).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse
from websockets.typing import Subprotocol

from .. import _http
from ..errors import ProtocolError, Superseded
from ..wire.frames import (
    BEARER_PREFIX,
    CONNECTOR_PROTOCOL_ERROR,
    LISTEN_PATH,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    ErrorFrame,
    ReadyFrame,
    RegisterFrame,
    RequestFrame,
    ResponseFrame,
    decode_frame,
    encode_frame,
)
from ..wire.signing import sign_request

__all__ = ["DevEngine", "EngineResult", "Exchange"]

log = logging.getLogger("connector.devengine")

SUPERSEDED = Superseded.code


@dataclass(frozen=True, slots=True)
class EngineResult:
    """What the engine got back for one request (after any retries)."""

    status: int
    body: str
    attempts: int
    message_id: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One answer a connector sent, with when its request went out (``journal=True``)."""

    request_id: str
    connector: int  # the attachment's number, as in ``history``
    sent_at: float  # time.monotonic() when this attempt was sent
    answered_at: float
    status: int
    body: str


@dataclass(eq=False)
class _Attachment:
    number: int
    ws: ServerConnection
    pending: dict[str, asyncio.Future[ResponseFrame | ErrorFrame]] = field(default_factory=dict)
    attached_at: float = field(default_factory=time.monotonic)


class _Detached(Exception):
    pass


def _offered(request: WsRequest) -> list[str]:
    values = request.headers.get_all("Sec-WebSocket-Protocol")
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _json_response(status: int, payload: dict[str, Any]) -> WsResponse:
    body = json.dumps(payload).encode()
    headers = Headers({"Content-Type": "application/json", "Content-Length": str(len(body))})
    return WsResponse(status, HTTPStatus(status).phrase, headers, body)


class DevEngine:
    """A local Ablo engine with one source, for development and tests."""

    def __init__(
        self,
        api_key: str | Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_port: int | None = None,
        source_id: str = "src_dev",
        organization_id: str = "org_dev",
        environment: str = "sandbox",
        request_timeout: float = 10.0,
        max_attempts: int = 5,
        attach_timeout: float = 30.0,
        ping_interval: float | None = 20.0,
        spread: bool = False,
        journal: bool = False,
    ) -> None:
        keys = [api_key] if isinstance(api_key, str) else list(api_key)
        if not keys or not all(keys):
            raise ValueError("the dev engine needs a non-empty API key")
        self._keys = frozenset(keys)
        self._signing_key = keys[0]
        self.host = host
        self.port = port
        self.api_port = api_port
        self.source_id = source_id
        self.organization_id = organization_id
        self.environment = environment
        self.request_timeout = request_timeout
        self.max_attempts = max_attempts
        self.attach_timeout = attach_timeout
        self.ping_interval = ping_interval
        # spread: keep every connector that attaches (no supersede) and send
        # requests round-robin, as an engine whose nodes each hold one might;
        # HA tests use it so two replicas serving at once cannot hide.
        self.spread = spread
        # journal: every answer received, on time or late, with its send time.
        self.journal: list[Exchange] | None = [] if journal else None
        self._sent_at: dict[str, float] = {}
        self._attachments: list[_Attachment] = []
        self._turns = itertools.count()
        self.attaches = 0
        self.supersedes = 0
        self.rejected_handshakes = 0
        self.history: list[tuple[float, str, int]] = []
        # Ids of the last answers received, for tests ("never an unasked id").
        self.answered_ids: collections.deque[str] = collections.deque(maxlen=100_000)
        self._active: _Attachment | None = None
        self._attached = asyncio.Event()
        self._numbers = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._server: Server | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._api: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"DevEngine(base_url={self.base_url!r}, attached={self.attached})"

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> DevEngine:
        await self._listen()
        if self.api_port is not None:
            self._api = await _http.start_http_server(self._api_request, self.host, self.api_port)
            self.api_port = self._api.sockets[0].getsockname()[1]
        log.info("dev engine listening on %s (control API %s)", self.ws_url, self.api_url or "off")
        return self

    async def _listen(self) -> None:
        self._server = await serve(
            self._connection,
            self.host,
            self.port,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            select_subprotocol=self._select_subprotocol,
            process_request=self._check_handshake,
            compression=None,
            ping_interval=self.ping_interval,
            max_size=None,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def restart(self, down_for: float = 0.0) -> None:
        """Crash the transport: abort every connection without a close frame,
        stop listening for ``down_for`` seconds, then listen on the same port.

        Requests under way are retried with their webhook-id once a connector
        is back, as the engine's durable retry would (for chaos tests).
        """
        assert self._server is not None
        for connection in list(self._server.connections):
            connection.transport.abort()
        self._server.close(close_connections=False)
        await self._server.wait_closed()
        await asyncio.sleep(down_for)
        await self._listen()
        log.info("dev engine restarted on %s", self.ws_url)

    async def close(self) -> None:
        if self._api is not None:
            self._api.close()
            await self._api.wait_closed()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> DevEngine:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """What a connector passes as ``--base-url``."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}{LISTEN_PATH}"

    @property
    def api_url(self) -> str | None:
        return None if self.api_port is None else f"http://{self.host}:{self.api_port}"

    @property
    def attached(self) -> bool:
        return self._active is not None

    async def wait_attached(self, timeout: float | None = None) -> None:
        # asyncio.timeout, here and below: wait_for on Python 3.11 drops a
        # cancellation of the caller that lands as the awaited call returns.
        async with asyncio.timeout(timeout):
            await self._attached.wait()

    async def _attachment(self) -> _Attachment | None:
        """The active connector, waiting up to ``attach_timeout`` for one.

        Loops because a connector can detach again between the event being
        set and this coroutine running.
        """
        deadline = time.monotonic() + self.attach_timeout
        while self._active is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._attached.wait()
        if self.spread and len(self._attachments) > 1:
            return self._attachments[next(self._turns) % len(self._attachments)]
        return self._active

    # --------------------------------------------------------------- handshake

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        # Echo only the protocol, never the bearer entry (it holds the key).
        return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None

    def _check_handshake(
        self, connection: ServerConnection, request: WsRequest
    ) -> WsResponse | None:
        if request.path.split("?", 1)[0] != LISTEN_PATH:
            return _json_response(404, {"error": "not_found"})
        offered = _offered(request)
        bearer = next(
            (p[len(BEARER_PREFIX) :] for p in offered if p.startswith(BEARER_PREFIX)), None
        )
        if bearer is None or bearer not in self._keys:
            self.rejected_handshakes += 1
            self._event("rejected", self.rejected_handshakes)
            return _json_response(
                401,
                {
                    "error": "source_connector_unauthenticated",
                    "message": "invalid or missing API key",
                },
            )
        if SUBPROTOCOL not in offered:
            return _json_response(400, {"error": "source_connector_protocol_required"})
        return None

    # --------------------------------------------------------------- sessions

    async def _connection(self, ws: ServerConnection) -> None:
        number = next(self._numbers)
        try:
            raw = await asyncio.wait_for(ws.recv(), 10)
            frame = decode_frame(raw)
        except (TimeoutError, ProtocolError, ConnectionClosed):
            await ws.close(1002, "register_required")
            return
        if not isinstance(frame, RegisterFrame) or frame.protocol_version != PROTOCOL_VERSION:
            await ws.send(
                encode_frame(ErrorFrame(code=CONNECTOR_PROTOCOL_ERROR, message="register first"))
            )
            await ws.close(1002, "register_required")
            return
        await ws.send(
            encode_frame(
                ReadyFrame(
                    protocol_version=PROTOCOL_VERSION,
                    source_id=self.source_id,
                    organization_id=self.organization_id,
                    environment=self.environment,
                )
            )
        )
        attachment = _Attachment(number, ws)
        previous, self._active = self._active, attachment
        self._attachments.append(attachment)
        self.attaches += 1
        self._event("attached", number)
        self._attached.set()
        if previous is not None and not self.spread:
            self.supersedes += 1
            self._event("superseded", previous.number)
            task = asyncio.ensure_future(self._supersede(previous))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        try:
            async for raw in ws:
                self._on_frame(attachment, raw)
        except ConnectionClosed:
            pass
        finally:
            self._detach(attachment)

    async def _supersede(self, attachment: _Attachment) -> None:
        with contextlib.suppress(ConnectionClosed):
            await attachment.ws.send(
                encode_frame(
                    ErrorFrame(code=SUPERSEDED, message="a newer connector took this source")
                )
            )
            await attachment.ws.close(4000, SUPERSEDED)

    def _detach(self, attachment: _Attachment) -> None:
        for future in attachment.pending.values():
            if not future.done():
                future.set_exception(_Detached())
        attachment.pending.clear()
        if attachment in self._attachments:
            self._attachments.remove(attachment)
            if self.spread and self._active is not attachment:
                self._event("detached", attachment.number)
        if self._active is attachment:
            self._active = self._attachments[-1] if self.spread and self._attachments else None
            if self._active is None:
                self._attached.clear()
            self._event("detached", attachment.number)

    def _event(self, what: str, number: int) -> None:
        self.history.append((time.monotonic(), what, number))
        log.info("connector #%d %s", number, what)

    def _on_frame(self, attachment: _Attachment, raw: str | bytes) -> None:
        try:
            frame = decode_frame(raw)
        except ProtocolError as error:
            log.warning("connector #%d sent a malformed frame: %s", attachment.number, error)
            return
        if isinstance(frame, ResponseFrame | ErrorFrame) and frame.id is not None:
            self.answered_ids.append(frame.id)
            if self.journal is not None and frame.id in self._sent_at:
                status, body = (
                    (frame.status, frame.body)
                    if isinstance(frame, ResponseFrame)
                    else (0, frame.code)
                )
                self.journal.append(
                    Exchange(
                        frame.id, attachment.number, self._sent_at[frame.id], time.monotonic(),
                        status, body,
                    )
                )  # fmt: skip
            future = attachment.pending.pop(frame.id, None)
            if future is not None and not future.done():
                future.set_result(frame)
            elif future is None:
                log.warning(
                    "connector #%d answered unknown request %s", attachment.number, frame.id
                )
        elif isinstance(frame, ErrorFrame):
            log.warning("connector #%d error: %s %s", attachment.number, frame.code, frame.message)

    # --------------------------------------------------------------- requests

    async def request(
        self,
        body: dict[str, Any] | str,
        *,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> EngineResult:
        """Send one signed request to the attached connector, retrying on drops
        and timeouts with the same ``webhook-id``."""
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        message_id = message_id or f"msg_{uuid.uuid4().hex}"
        per_attempt = self.request_timeout if timeout is None else timeout
        for attempt in range(1, self.max_attempts + 1):
            attachment = await self._attachment()
            if attachment is None:
                return EngineResult(
                    503, json.dumps({"error": "source_connector_not_attached"}), attempt, message_id
                )
            request_id = f"req_{next(self._request_ids)}"
            headers = self.sign(message_id, text)
            future: asyncio.Future[ResponseFrame | ErrorFrame] = (
                asyncio.get_running_loop().create_future()
            )
            attachment.pending[request_id] = future
            frame = RequestFrame(
                id=request_id,
                method="POST",
                url="https://source.ablo.invalid/v1/source",
                headers=headers,
                body=text,
            )
            if self.journal is not None:
                self._sent_at[request_id] = time.monotonic()
            try:
                await attachment.ws.send(encode_frame(frame))
                async with asyncio.timeout(per_attempt):
                    answer = await future
            except (ConnectionClosed, _Detached):
                # The socket can be closed before its reader has detached it;
                # detach now, or every retry would hit the same dead socket.
                self._detach(attachment)
                log.info("request %s (%s): connector dropped; retrying", request_id, message_id)
                continue
            except (TimeoutError, asyncio.CancelledError) as error:
                attachment.pending.pop(request_id, None)
                if isinstance(error, asyncio.CancelledError):
                    raise
                log.info(
                    "request %s (%s): no answer in %g s; retrying",
                    request_id,
                    message_id,
                    per_attempt,
                )
                continue
            if isinstance(answer, ErrorFrame):
                status = 400 if answer.code == CONNECTOR_PROTOCOL_ERROR else 502
                payload = {"error": answer.code, "message": answer.message}
                return EngineResult(status, json.dumps(payload), attempt, message_id)
            return EngineResult(answer.status, answer.body, attempt, message_id)
        return EngineResult(
            504, json.dumps({"error": "source_connector_timeout"}), self.max_attempts, message_id
        )

    def sign(self, message_id: str, body: str) -> dict[str, str]:
        """The headers this engine would send with ``body``."""
        return {
            "content-type": "application/json",
            **sign_request(self._signing_key, message_id, body),
        }

    async def send_raw(self, raw: str | bytes) -> None:
        """Send any message, valid or not, to the attached connector (for tests)."""
        attachment = await self._attachment()
        if attachment is None:
            raise TimeoutError("no connector attached")
        await attachment.ws.send(raw)

    async def exchange(
        self, frame: RequestFrame | str | bytes, request_id: str, *, timeout: float = 10.0
    ) -> ResponseFrame | ErrorFrame:
        """Send one frame once (no retry) and wait for the answer to ``request_id``."""
        attachment = await self._attachment()
        if attachment is None:
            raise TimeoutError("no connector attached")
        future: asyncio.Future[ResponseFrame | ErrorFrame] = (
            asyncio.get_running_loop().create_future()
        )
        attachment.pending[request_id] = future
        await attachment.ws.send(encode_frame(frame) if isinstance(frame, RequestFrame) else frame)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            attachment.pending.pop(request_id, None)

    async def _api_request(self, request: _http.Request) -> _http.Reply:
        if request.method == "POST" and request.path == "/v1/source/requests":
            try:
                body = json.loads(request.body)
            except ValueError:
                return _http.Reply.json(400, {"error": "invalid_json"})
            result = await self.request(body if isinstance(body, dict) else request.body.decode())
            return _http.Reply(
                result.status,
                result.body.encode(),
                {
                    "Content-Type": "application/json",
                    "X-Ablo-Attempts": str(result.attempts),
                    "X-Ablo-Message-Id": result.message_id,
                },
            )
        if request.method == "GET" and request.path == "/v1/status":
            return _http.Reply.json(
                200,
                {
                    "attached": self.attached,
                    "sourceId": self.source_id,
                    "attaches": self.attaches,
                    "supersedes": self.supersedes,
                    "rejectedHandshakes": self.rejected_handshakes,
                },
            )
        return _http.Reply.json(404, {"error": "not_found"})
