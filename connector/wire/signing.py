"""Is this request authentic? Standard Webhooks signing and verification.

The engine signs ``"{webhook-id}.{webhook-timestamp}.{body}"`` with
HMAC-SHA256, keyed by the raw UTF-8 bytes of the API key, and sends
``webhook-signature: v1,<base64>``. This module owns the header parsing and
the check order of the engine's reference verifier, so every failure maps to
one of six codes (``docs/protocol.md`` §4) and nothing else ever escapes.

Signing (the engine's side: the dev engine, tests) uses the
``standardwebhooks`` package. Verification computes the same HMAC itself,
from hash states prepared once per key: the package's ``sign`` builds a
datetime, an HMAC object and a formatted string per call, which was a fifth
of the connector's CPU under load, and even :mod:`hmac`'s own objects cost
a microsecond per request in Python wrappers. The tests hold both to the
engine's vectors and to each other.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Final, NamedTuple

from standardwebhooks.webhooks import Webhook

from ..errors import SignatureError

__all__ = [
    "DEFAULT_TOLERANCE",
    "VerifiedRequest",
    "Verifier",
    "sign_request",
    "verify_request",
]

DEFAULT_TOLERANCE: Final = 300.0

# A plain decimal number, as Standard Webhooks timestamps are written; no
# hex, underscores, NaN or infinities (which float() would take).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# The seconds a calendar date can name (years 1 to 9999), as the signers accept.
_FIRST_SECOND: Final = -62135596800
_LAST_SECOND: Final = 253402300799


class VerifiedRequest(NamedTuple):
    """What a valid signature vouches for."""

    message_id: str
    signed_at: int


def header_value(headers: Mapping[str, str], name: str) -> str:
    """The trimmed value of header ``name`` (lowercase), matched case-insensitively; "" if absent."""
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                value = candidate
                break
    return value.strip() if isinstance(value, str) else ""


def _presented_signatures(header: str) -> list[str]:
    signatures = []
    for entry in header.split():
        scheme, comma, value = entry.partition(",")
        if comma and scheme == "v1" and value:
            signatures.append(value)
    return signatures


def _sign(signer: Webhook, message_id: str, when: datetime, body: str) -> str:
    try:
        return signer.sign(msg_id=message_id, timestamp=when, data=body)
    except UnicodeEncodeError:
        # A lone surrogate (from a JSON "\ud800" escape) cannot be encoded; the
        # engine's TextEncoder signs U+FFFD in its place, so do the same.
        return signer.sign(
            msg_id=_replace_lone_surrogates(message_id),
            timestamp=when,
            data=_replace_lone_surrogates(body),
        )


class _Key:
    """One API key's HMAC-SHA256, prepared once (RFC 2104: the hash states after
    the key XOR ipad and opad blocks), so a request costs two hash copies
    and no key schedule, all in C."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: str) -> None:
        block = key.encode("utf-8")
        if len(block) > _SHA256_BLOCK:
            block = hashlib.sha256(block).digest()
        block = block.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))

    def signature(self, message_id: str, signed_at: int, body: str) -> bytes:
        """The base64 HMAC over ``"{id}.{timestamp}.{body}"``, as ASCII bytes."""
        try:
            payload = f"{message_id}.{signed_at}.{body}".encode()
        except UnicodeEncodeError:
            # Lone surrogates: sign U+FFFD in their place, as the engine does.
            payload = (
                f"{_replace_lone_surrogates(message_id)}.{signed_at}."
                f"{_replace_lone_surrogates(body)}"
            ).encode()
        inner = self._inner.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return binascii.b2a_base64(outer.digest(), newline=False)


_SHA256_BLOCK: Final = 64


def _replace_lone_surrogates(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _ascii(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


class Verifier:
    """Verifies requests against one or more API keys (any may match).

    Build it once per process: the keys are prepared a single time, and the
    object never shows them in ``repr()``.
    """

    __slots__ = ("_keyed", "_keys", "tolerance")

    def __init__(
        self, api_keys: str | Iterable[str], *, tolerance: float = DEFAULT_TOLERANCE
    ) -> None:
        keys = [api_keys] if isinstance(api_keys, str) else list(api_keys)
        self._keys = tuple(key for key in keys if key)
        self._keyed = tuple(_Key(key) for key in self._keys)
        self.tolerance = tolerance

    def __repr__(self) -> str:
        return f"Verifier(keys=<{len(self._keys)} redacted>, tolerance={self.tolerance})"

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    def redact(self, text: str) -> str:
        """``text`` with every API key this verifier holds replaced."""
        for key in self._keys:
            if key in text:
                text = text.replace(key, "[redacted]")
        return text

    def verify(
        self, headers: Mapping[str, str], body: str, *, now: float | None = None
    ) -> VerifiedRequest:
        get = headers.get  # the engine sends lowercase names: three lookups, no scan
        message_id = get("webhook-id")
        raw_timestamp = get("webhook-timestamp")
        signature_header = get("webhook-signature")
        if message_id is None or raw_timestamp is None or signature_header is None:
            message_id = header_value(headers, "webhook-id")
            raw_timestamp = header_value(headers, "webhook-timestamp")
            signature_header = header_value(headers, "webhook-signature")
        else:
            message_id, raw_timestamp = message_id.strip(), raw_timestamp.strip()
        if not message_id:
            raise SignatureError("source_id_missing", "missing webhook-id header")
        if not raw_timestamp:
            raise SignatureError("source_timestamp_missing", "missing webhook-timestamp header")
        timestamp: float
        if raw_timestamp.isdigit() and raw_timestamp.isascii() and len(raw_timestamp) <= 18:
            timestamp = int(raw_timestamp)  # what every engine sends: skip the general parser
        else:
            # float() reads any length (5,000 digits are inf, which is not whole
            # seconds); int() of such a string would raise instead.
            if not _NUMBER.fullmatch(raw_timestamp):
                raise SignatureError(
                    "source_timestamp_invalid", "webhook-timestamp is not a number"
                )
            timestamp = float(raw_timestamp)
            if not timestamp.is_integer():
                raise SignatureError(
                    "source_timestamp_invalid", "webhook-timestamp is not whole Unix seconds"
                )

        current = int(time.time() if now is None else now)
        if abs(current - timestamp) > self.tolerance:
            raise SignatureError(
                "source_timestamp_expired",
                "webhook-timestamp is outside the allowed clock-skew window",
            )
        signed_at = int(timestamp)

        presented = _presented_signatures(signature_header)
        if not presented:
            raise SignatureError("source_signature_missing", "missing webhook-signature header")

        if not _FIRST_SECOND <= signed_at <= _LAST_SECOND:
            raise SignatureError("source_timestamp_invalid", "webhook-timestamp is out of range")
        for key in self._keyed:
            expected = key.signature(message_id, signed_at, body)
            for signature in presented:
                if hmac.compare_digest(expected, _ascii(signature)):
                    return VerifiedRequest(message_id, signed_at)
        raise SignatureError("source_signature_invalid", "invalid webhook-signature")


def verify_request(
    headers: Mapping[str, str],
    body: str,
    api_keys: str | Iterable[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> VerifiedRequest:
    """Verify one signed request, or raise :class:`SignatureError`.

    ``api_keys`` is one key or several (during a rotation any may match).
    Header names are matched case-insensitively and values are trimmed.
    Checks run in the engine's order: id, timestamp present, timestamp
    numeric, timestamp within ``tolerance`` seconds of ``now`` (bound
    included), signature present, signature matches.
    """
    return Verifier(api_keys, tolerance=tolerance).verify(headers, body, now=now)


def sign_request(
    api_key: str, message_id: str, body: str, timestamp: int | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers the engine would send with ``body``."""
    if not api_key:
        raise ValueError("api_key must not be empty")
    signed_at = int(time.time()) if timestamp is None else int(timestamp)
    signer = Webhook(api_key.encode("utf-8"))
    when = datetime.fromtimestamp(signed_at, tz=UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(signed_at),
        "webhook-signature": _sign(signer, message_id, when, body),
    }
