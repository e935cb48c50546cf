"""What went wrong, and which exit code says so?

Every exception the connector raises on purpose is one of these::

    ConnectorError                    the root: ``except ConnectorError`` catches ours
    ├── ConfigError (ValueError)      a setting is missing or wrong; the process exits 78
    ├── ProtocolError (ValueError)    a message is not a valid ablo.source.v1 frame
    ├── SignatureError                a request failed verification (answered 401)
    ├── SourceError                   a handler's chosen answer: status, code, message
    ├── ConnectFailure                why a connection ended; the supervisor decides what next
    │   ├── ConnectionLost            transient (refused, reset, DNS, closed): retry on schedule
    │   ├── HandshakeRejected         the engine answered the upgrade with an HTTP error
    │   │   ├── AuthenticationFailed  401/403: retrying fast will not fix the key
    │   │   └── RateLimited           429: wait what Retry-After says
    │   ├── Superseded                a newer connector took the source: stand down
    │   └── ProtocolMismatch          the engine speaks another protocol version
    └── CheckFailed                   one step of ``ablo-connector check`` failed

The exit codes are sysexits.h's, which systemd (``RestartPreventExitStatus=``)
and Kubernetes (the container's last state) both show an operator.
"""

from __future__ import annotations

from typing import Any, Final, Literal

__all__ = [
    "EX_CONFIG",
    "EX_FAILURE",
    "EX_INTERRUPTED",
    "EX_OK",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "AuthenticationFailed",
    "CheckFailed",
    "ConfigError",
    "ConnectFailure",
    "ConnectionLost",
    "ConnectorError",
    "HandshakeRejected",
    "ProtocolError",
    "ProtocolMismatch",
    "RateLimited",
    "SignatureError",
    "SignatureErrorCode",
    "SourceError",
    "Superseded",
    "describe_error",
]

EX_OK: Final = 0
EX_FAILURE: Final = 1  # a forced exit (second signal) or an unexpected error: restart me
EX_USAGE: Final = 2  # click's own code for an unknown flag or a bad value
EX_UNAVAILABLE: Final = 69  # the engine or the database cannot be reached (check, migrate)
EX_CONFIG: Final = 78  # a configuration or credential problem: do not restart me
EX_INTERRUPTED: Final = 130  # Ctrl-C before the command handles signals itself (128 + SIGINT)


class ConnectorError(Exception):
    """The root of every exception the connector raises on purpose."""


class ConfigError(ConnectorError, ValueError):
    """A setting is missing or wrong; the message says which and how to fix it."""


class ProtocolError(ConnectorError, ValueError):
    """A message that is not a valid ``ablo.source.v1`` frame.

    ``request_id`` is set when the message still looked like a ``request``
    with a usable ``id``, so the caller can fail that request at once instead
    of leaving the engine to time it out. ``close_code`` is set when no frame
    of that connection can be trusted any more (1007: a text message that is
    not UTF-8, RFC 6455 §8.1): the caller closes with it.
    """

    code: Final = "source_connector_protocol_error"

    def __init__(
        self, message: str, *, request_id: str | None = None, close_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.close_code = close_code


SignatureErrorCode = Literal[
    "source_id_missing",
    "source_timestamp_missing",
    "source_timestamp_invalid",
    "source_timestamp_expired",
    "source_signature_missing",
    "source_signature_invalid",
]


class SignatureError(ConnectorError):
    """A request failed verification; ``code`` names the first check it failed."""

    def __init__(self, code: SignatureErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: SignatureErrorCode = code
        self.message = message


class SourceError(ConnectorError):
    """Raise from a handler to answer with a specific status and error code.

    ``SourceError("idempotency_conflict", "key reused", status=409)`` answers
    409 ``{"error": "idempotency_conflict", "message": "key reused"}``; extra
    keyword arguments become extra fields of the error body.
    """

    def __init__(self, code: str, message: str = "", *, status: int = 400, **details: Any):
        super().__init__(message or code)
        self.code = code
        self.message = message
        self.status = status
        self.details = details

    def body(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"error": self.code}
        if self.message:
            payload["message"] = self.message
        payload.update(self.details)
        return payload


class ConnectFailure(ConnectorError):
    """Why a connection ended or never became ready.

    ``ready_for`` is how long it had been ready (0 if it never was): the
    reconnect schedule restarts only after a connection that stayed up.
    """

    code: str = "connection_lost"

    def __init__(self, message: str, *, ready_for: float = 0.0, code: str | None = None) -> None:
        super().__init__(message)
        self.ready_for = ready_for
        if code is not None:
            self.code = code


class ConnectionLost(ConnectFailure):
    """Transient: refused, reset, DNS, 5xx, closed, ping timeout. Retry on schedule.

    ``code`` says which (``dns``, ``refused``, ``tls``, ``timeout``, ``closed``,
    ...): it is what ``/readyz`` shows as ``lastError``.
    """


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

    code = "source_connector_superseded"


class ProtocolMismatch(ConnectFailure):
    """The engine speaks another protocol version."""

    code = "protocol_version_mismatch"


class CheckFailed(ConnectorError):
    """One step of ``ablo-connector check`` failed: what, why, and what to check."""

    def __init__(self, step: str, detail: str, hint: str, exit_status: int = EX_UNAVAILABLE):
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail
        self.hint = hint
        self.exit_status = exit_status


def describe_error(error: BaseException | str, limit: int = 300) -> str:
    """One short line for an exception's text, for a log line or an error message.

    The first line only: a driver's or resolver's text can run to a page, and
    one line keeps the log greppable.
    """
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return text.splitlines()[0][:limit]
