"""What is on the wire? The ``ablo.source.v1`` frames and connection constants.

Pure data and functions, no I/O. Every frame is one JSON text message with a
``type`` discriminator; :func:`decode_frame` turns a raw message into one of
the five frame models or raises :class:`ProtocolError`, and
:func:`encode_frame` writes a frame back as compact JSON.

Decoding follows the engine's reference decoder (see ``docs/protocol.md`` §3):
unknown fields are ignored, ``200.0`` and ``2e2`` are the integer 200, an
optional field is absent or of its type (an explicit ``null`` is rejected),
and a binary message is read as UTF-8 with a leading BOM dropped.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final, Literal, TypeVar

import pydantic_core
from pydantic import (
    BeforeValidator,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from ..errors import ProtocolError
from .strict_json import WireModel, describe_validation_error, loads, validate_fast

__all__ = [
    "BEARER_PREFIX",
    "CONNECTOR_PROTOCOL_ERROR",
    "DEFAULT_BASE_URL",
    "LISTEN_PATH",
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "ErrorFrame",
    "Frame",
    "ReadyFrame",
    "RegisterFrame",
    "RequestFrame",
    "ResponseFrame",
    "decode_frame",
    "encode_frame",
    "encode_response",
    "subprotocols_for",
    "websocket_url",
]

PROTOCOL_VERSION: Final = 1
LISTEN_PATH: Final = "/v1/source/listen"
SUBPROTOCOL: Final = "ablo.source.v1"
BEARER_PREFIX: Final = "ablo.bearer."
DEFAULT_BASE_URL: Final = "https://api.abloatai.com"
CONNECTOR_PROTOCOL_ERROR: Final = ProtocolError.code

# The reference runs on JavaScript numbers: an int field must be a safe integer.
_MAX_SAFE_INTEGER: Final = 2**53 - 1

_T = TypeVar("_T")


def _reject_null(value: Any) -> Any:
    if value is None:
        raise ValueError("must be omitted rather than null")
    return value


def _json_integer(value: Any) -> Any:
    # Booleans and strings are not numbers on the wire; 200.0 and 2e2 are.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        value = int(value)
    if abs(value) > _MAX_SAFE_INTEGER:
        raise ValueError("must be a safe integer (|n| <= 2^53-1)")
    return value


# An optional field that may be absent but never an explicit null.
Omittable = Annotated[_T | None, BeforeValidator(_reject_null)]
WireInt = Annotated[int, BeforeValidator(_json_integer)]
NonEmptyStr = Annotated[str, StringConstraints(strict=True, min_length=1)]
WireStr = Annotated[str, StringConstraints(strict=True)]
EnvironmentSlug = Annotated[
    str,
    StringConstraints(strict=True, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$"),
]
Headers = dict[WireStr, WireStr]


class RegisterFrame(WireModel):
    """Connector → engine, the first frame after the socket opens."""

    type: Literal["register"] = "register"
    protocol_version: WireInt = PROTOCOL_VERSION
    client: Omittable[WireStr] = None


class ReadyFrame(WireModel):
    """Engine → connector: registration accepted, with the source it resolved."""

    type: Literal["ready"] = "ready"
    protocol_version: WireInt
    source_id: Omittable[WireStr] = None
    organization_id: Omittable[WireStr] = None
    environment: Omittable[EnvironmentSlug] = None


class RequestFrame(WireModel):
    """Engine → connector: one signed Data Source request."""

    type: Literal["request"] = "request"
    id: NonEmptyStr
    method: Literal["POST"]  # required: the engine's schema has no default
    url: NonEmptyStr
    headers: Headers
    body: WireStr


class ResponseFrame(WireModel):
    """Connector → engine: the answer to the request with the same ``id``."""

    type: Literal["response"] = "response"
    id: NonEmptyStr
    status: WireInt
    headers: Omittable[Headers] = None
    body: WireStr


class ErrorFrame(WireModel):
    """Either direction: fails one request (with ``id``) or the connection."""

    type: Literal["error"] = "error"
    id: Omittable[NonEmptyStr] = None
    code: NonEmptyStr
    message: WireStr


Frame = Annotated[
    RegisterFrame | ReadyFrame | RequestFrame | ResponseFrame | ErrorFrame,
    Field(discriminator="type"),
]

_FRAME_ADAPTER: TypeAdapter[Frame] = TypeAdapter(Frame)


# RFC 6455 §8.1: a text message that is not UTF-8 fails the connection.
INVALID_TEXT_CLOSE_CODE: Final = 1007


def _text_of(raw: str | bytes | bytearray | memoryview, binary: bool) -> str:
    if isinstance(raw, str):
        return raw
    if not binary:
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ProtocolError(
                f"a text message that is not valid UTF-8 (byte {error.start})",
                close_code=INVALID_TEXT_CLOSE_CODE,
            ) from None
    text = bytes(raw).decode("utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def _usable_request_id(value: Any) -> str | None:
    if isinstance(value, dict) and value.get("type") == "request":
        frame_id = value.get("id")
        if isinstance(frame_id, str) and frame_id and _utf8_encodable(frame_id):
            return frame_id
    return None


def _utf8_encodable(text: str) -> bool:
    # A JSON "\ud800" escape yields a lone surrogate, which no frame can carry back.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode_frame(raw: str | bytes | bytearray | memoryview, *, binary: bool = True) -> Frame:
    """Parse and validate one incoming message.

    ``raw`` as bytes is a binary message unless ``binary`` is False: then it
    is the undecoded payload of a text message, which must be UTF-8.

    Raises :class:`ProtocolError` for anything that is not a valid frame; the
    message names the offending fields but never echoes their values.
    """
    fast = raw if isinstance(raw, str | bytes) else bytes(raw)
    frame = validate_fast(_FRAME_ADAPTER, fast)  # rejects invalid UTF-8 itself
    if frame is not None:
        return frame
    text = _text_of(raw, binary)  # a BOM, invalid UTF-8, or simply invalid: diagnose on text
    try:
        value = loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("frame is not valid JSON") from None
    try:
        return _FRAME_ADAPTER.validate_python(value)
    except ValidationError as error:
        raise ProtocolError(
            f"invalid frame: {describe_validation_error(error, 'frame')}",
            request_id=_usable_request_id(value),
        ) from None


def encode_frame(frame: Frame) -> str:
    """Compact JSON for one frame; absent optional fields are left out.

    Never raises for a frame :func:`decode_frame` accepted: a string holding
    a lone surrogate (from a ``"\\ud800"`` escape) is written back as that
    escape, as JavaScript's ``JSON.stringify`` does.
    """
    try:
        return frame.model_dump_json(exclude_none=True)
    except pydantic_core.PydanticSerializationError:
        return json.dumps(frame.model_dump(exclude_none=True), separators=(",", ":"))


def encode_response(request_id: str, status: int, body: str) -> bytes:
    """``encode_frame(ResponseFrame(...))`` as UTF-8, without building the model
    (hot path: the bytes go to the socket as a text frame, never decoded)."""
    return pydantic_core.to_json(
        {"type": "response", "id": request_id, "status": status, "body": body}
    )


def subprotocols_for(api_key: str) -> list[str]:
    """The ``Sec-WebSocket-Protocol`` offer: the protocol, then the bearer key."""
    return [SUBPROTOCOL, f"{BEARER_PREFIX}{api_key}"]


def websocket_url(base_url: str = DEFAULT_BASE_URL) -> str:
    """The listen URL for a base URL, as ``docs/protocol.md`` §2 describes.

    ``https://`` becomes ``wss://``, ``http://`` becomes ``ws://``, an explicit
    ``ws(s)://`` is kept, trailing slashes are dropped.
    """
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + LISTEN_PATH
