"""What does each message mean at this point of the connection? The
connector's side of ``ablo.source.v1``, without I/O.

A :class:`ClientSession` holds the rules of one connection and none of its
sockets, in the manner of websockets' ``ClientProtocol``: the caller offers
:func:`subprotocols_for`, reports the subprotocol the server chose
(:meth:`ClientSession.accept`), sends :meth:`ClientSession.register_text`,
and feeds every received message to :meth:`ClientSession.receive`, which
says what happened as one event. The daemon's connection and the ``check``
command drive the same object, so the handshake is written once.

An :class:`Ended` event carries the failure that ends the connection and the
close code and reason to send first; everything else leaves it open.
:func:`rejection` and :func:`closed` classify how a connection ended before
or after it opened, from plain values, so they need no socket library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .._version import __version__
from ..errors import (
    AuthenticationFailed,
    ConnectFailure,
    ConnectionLost,
    HandshakeRejected,
    ProtocolError,
    ProtocolMismatch,
    RateLimited,
    Superseded,
)
from .frames import (
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    ErrorFrame,
    Frame,
    ReadyFrame,
    RegisterFrame,
    RequestFrame,
    decode_frame,
    encode_frame,
    subprotocols_for,
)

__all__ = [
    "CLIENT_NAME",
    "TOO_BIG_CODE",
    "ClientSession",
    "EngineError",
    "Ended",
    "Event",
    "Ignored",
    "Invalid",
    "Ready",
    "Request",
    "closed",
    "rejection",
    "subprotocols_for",
]

CLIENT_NAME: Final = f"ablo-connector-python/{__version__}"
SUPERSEDED_CODE: Final = Superseded.code
TOO_BIG_CODE: Final = "message_too_big"

_ID_IN_PREFIX = re.compile(r'"id"\s*:\s*"([^"\\]{1,256})"')
_TYPE_REQUEST_IN_PREFIX = re.compile(r'"type"\s*:\s*"request"')


@dataclass(frozen=True, slots=True)
class Ready:
    """The engine accepted the registration."""

    frame: ReadyFrame


@dataclass(frozen=True, slots=True)
class Request:
    """A request to serve; answer it with a ``response`` frame of the same id."""

    frame: RequestFrame


@dataclass(frozen=True, slots=True)
class EngineError:
    """The engine reported an error that does not end the connection.

    With ``request_id`` it failed that one request; without, it is a
    connection-level notice to log.
    """

    code: str
    message: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that is not a valid frame (or too large); the connection stays up.

    ``reason`` is ``malformed``, ``invalid_request`` or ``oversize``; when
    ``request_id`` is set, fail that request with an ``error`` frame
    (:meth:`ClientSession.error_text`) saying ``message`` (default:
    ``detail``) instead of letting the engine time out.
    """

    reason: str
    detail: str
    request_id: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid frame with nothing to do (a repeated ``ready``, a connector-only frame)."""

    detail: str


@dataclass(frozen=True, slots=True)
class Ended:
    """The connection is over: close with ``close_code``/``close_reason``
    (when set), then raise ``failure``."""

    failure: ConnectFailure
    close_code: int | None = None
    close_reason: str = ""


Event = Ready | Request | EngineError | Invalid | Ignored | Ended


class ClientSession:
    """The rules of one connection, from the upgrade to its end."""

    def __init__(self, *, max_message_size: int, client_name: str = CLIENT_NAME) -> None:
        self.max_message_size = max_message_size
        self.client_name = client_name
        self.ready: ReadyFrame | None = None

    def accept(self, subprotocol: str | None, url: str) -> Ended | None:
        """Whether the upgrade's echoed subprotocol is ours; an :class:`Ended` if not."""
        if subprotocol == SUBPROTOCOL:
            return None
        return Ended(
            ConnectionLost(
                f"the server at {url} did not accept the {SUBPROTOCOL} subprotocol "
                "(is the base URL an Ablo engine?)",
                code="subprotocol",
            ),
            1002,
            "subprotocol_required",
        )

    def register_text(self) -> str:
        """The first frame to send once the socket is open."""
        return encode_frame(
            RegisterFrame(protocol_version=PROTOCOL_VERSION, client=self.client_name)
        )

    def ready_timed_out(self, seconds: float) -> Ended:
        return Ended(
            ConnectionLost(
                f"no ready frame within {seconds:g} s of register", code="ready_timeout"
            ),
            1002,
            "ready_timeout",
        )

    def receive(self, raw: str | bytes, *, binary: bool = True, ready_for: float = 0.0) -> Event:
        """What one received message means now. Never raises.

        ``raw`` is a text message (``str``, or its undecoded UTF-8 bytes with
        ``binary=False``) or a binary one (``bytes``).
        """
        if len(raw) > self.max_message_size // 4 and _encoded_size(raw) > self.max_message_size:
            return self._oversize(raw)
        try:
            frame = decode_frame(raw, binary=binary)
        except ProtocolError as error:
            if error.close_code is not None:
                return Ended(
                    ConnectionLost(f"the engine sent {error}", code="invalid_text"),
                    error.close_code,
                    "invalid_utf8",
                )
            reason = "malformed" if error.request_id is None else "invalid_request"
            return Invalid(reason, str(error), error.request_id)
        return self._classify(frame, ready_for)

    def error_text(self, request_id: str, message: str) -> str:
        """An ``error`` frame failing one request the connector cannot serve."""
        return encode_frame(ErrorFrame(id=request_id, code=ProtocolError.code, message=message))

    def _classify(self, frame: Frame, ready_for: float) -> Event:
        if isinstance(frame, RequestFrame):
            # The reference serves requests that arrive before ready; so do we.
            return Request(frame)
        if isinstance(frame, ReadyFrame):
            if self.ready is not None:
                return Ignored("a repeated ready frame")
            if frame.protocol_version != PROTOCOL_VERSION:
                return Ended(
                    ProtocolMismatch(
                        f"the engine speaks protocol version {frame.protocol_version}; this "
                        f"connector speaks {PROTOCOL_VERSION} (upgrade ablo-connector)"
                    ),
                    1002,
                    "protocol_version_mismatch",
                )
            self.ready = frame
            return Ready(frame)
        if isinstance(frame, ErrorFrame):
            if frame.id is not None:
                return EngineError(frame.code, frame.message, frame.id)
            if frame.code == SUPERSEDED_CODE:
                message = frame.message or "a newer connector took this source"
                if self.ready is None:
                    return Ended(Superseded(message), 1000, "registration_refused")
                return Ended(Superseded(message, ready_for=ready_for))
            if self.ready is None:
                return Ended(
                    ConnectionLost(
                        f"the engine refused registration: {frame.code}", code=frame.code
                    ),
                    1000,
                    "registration_refused",
                )
            return EngineError(frame.code, frame.message)
        return Ignored(f"a {frame.type} frame, which only a connector sends")

    def _oversize(self, raw: str | bytes) -> Invalid:
        size = _encoded_size(raw)
        prefix = raw[:512] if isinstance(raw, str) else raw[:512].decode("utf-8", "replace")
        request_id = None
        if _TYPE_REQUEST_IN_PREFIX.search(prefix):
            match = _ID_IN_PREFIX.search(prefix)
            request_id = match.group(1) if match else None
        limit = self.max_message_size
        return Invalid(
            "oversize",
            f"a frame of {size} bytes is over the {limit}-byte limit",
            request_id,
            f"request frame of {size} bytes exceeds the connector's {limit}-byte limit",
        )


def _encoded_size(raw: str | bytes) -> int:
    return len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))


# ------------------------------------------------------------ how it ended


def rejection(
    status: int, headers: Mapping[str, str], body: bytes | bytearray | None
) -> HandshakeRejected:
    """The failure for an upgrade the engine answered with HTTP ``status``."""
    code = _engine_code(body)
    described = f"the engine rejected the connection: HTTP {status}" + (
        f" ({code})" if code else ""
    )
    if status in (401, 403):
        return AuthenticationFailed(status, code, described)
    if status == 429:
        return RateLimited(status, code, described, _retry_after(headers))
    return HandshakeRejected(status, code, described)


def closed(code: int | None, reason: str, *, ready_for: float) -> ConnectFailure:
    """The failure for a socket that closed (``code`` None: dropped without a close frame)."""
    if reason == SUPERSEDED_CODE:
        return Superseded("a newer connector took this source", ready_for=ready_for)
    if code is None:
        return ConnectionLost(
            "connection dropped without a close frame", ready_for=ready_for, code="dropped"
        )
    if code == 1011 and "ping" in reason:
        return ConnectionLost(
            "keepalive ping timed out (half-open link)", ready_for=ready_for, code="ping_timeout"
        )
    if code == 1007:
        return ConnectionLost(
            "a text message that is not valid UTF-8 closed the connection (1007); redialing",
            ready_for=ready_for,
            code="invalid_text",
        )
    if code == 1009:
        # Beyond the transport's limit a frame cannot even be read, so the
        # only answer is to close; the engine retries what was in flight.
        return ConnectionLost(
            "a frame too large to read (over 4 x --max-message-size, and at least 1 MiB more) "
            "closed the connection (1009); redialing",
            ready_for=ready_for,
            code=TOO_BIG_CODE,
        )
    detail = f"code {code}" + (f" ({reason})" if reason else "")
    return ConnectionLost(f"connection closed: {detail}", ready_for=ready_for, code="closed")


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
