"""How does an operator read it? Logging set-up with secrets redacted.

Every line goes through :class:`RedactingFormatter`, which replaces each
registered secret (the API key) wherever it appears, tracebacks included:
the code never logs the key, and this makes sure a handler's exception
message or a library's debug line cannot either.

With ``--log-format json`` each line is one JSON object: ``time``,
``level``, ``logger``, ``message``, then the record's fields (the
connector's are listed in :data:`REQUEST_FIELDS`; a handler's own
``extra=`` fields come along too), ``source_id`` once registered, and
``trace_id``/``span_id`` while a traced request runs. python-json-logger
writes the object (any value a handler logs becomes JSON, never an
exception); the redaction still sees the finished line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from .._redact import REDACTED
from .status import ConnectorStatus

__all__ = [
    "REQUEST_FIELDS",
    "LogFormat",
    "RedactingFormatter",
    "configure_logging",
    "installed_formatter",
    "json_line",
    "redact",
    "set_trace_lookup",
]

LogFormat = Literal["text", "json"]

#: The fields a request's log lines carry (DEBUG for each request, WARNING or
#: ERROR when it failed); connection failures carry ``error_code`` and ``attempt``.
REQUEST_FIELDS: Final = (
    "request_id", "message_id", "operation", "model", "status", "duration_ms", "error_code",
    "replayed", "reference", "source_id", "attempt",
)  # fmt: skip

# The trace and span ids of the current span, when tracing is on (set by .tracing).
_trace_lookup: Callable[[], tuple[str, str] | None] | None = None


def set_trace_lookup(lookup: Callable[[], tuple[str, str] | None] | None) -> None:
    """Give JSON lines the current span's ``trace_id``/``span_id`` (None: stop)."""
    global _trace_lookup
    _trace_lookup = lookup


def _utc(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created * 1000) % 1000:03d}Z"
    )


class _TextFormatter(logging.Formatter):
    """One line: the time in UTC as the JSON lines write it, level, logger,
    message. Local time would follow the process's ``TZ``, which a Django
    project (``--django``) sets to its ``TIME_ZONE``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc(record.created)


class _JsonFormatter(JsonFormatter):
    """``time``, ``level``, ``logger``, ``message`` first; then the record's fields."""

    def __init__(self) -> None:
        super().__init__(
            json_ensure_ascii=False,
            rename_fields={"exc_info": "exception", "stack_info": "stack"},
            reserved_attrs=[*RESERVED_ATTRS, "taskName"],
        )
        self.status: ConnectorStatus | None = None

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = _utc(record.created)
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        log_data["message"] = record.message
        super().add_fields(log_data, record, message_dict)
        status = self.status
        if status is not None and status.source_id and "source_id" not in log_data:
            log_data["source_id"] = status.source_id
        lookup = _trace_lookup
        if lookup is not None and "trace_id" not in log_data:
            ids = lookup()
            if ids is not None:
                log_data["trace_id"], log_data["span_id"] = ids


def _variants(secret: str) -> set[str]:
    """``secret`` as it may appear in a line: as is, and escaped inside a JSON string."""
    return {
        secret,
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret, ensure_ascii=True)[1:-1],
    }


class RedactingFormatter(logging.Formatter):
    """Formats with ``inner``, then blanks out every secret (and its JSON-escaped form)."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._inner = inner
        self._given: set[str] = set()
        self._secrets: list[str] = []
        for secret in secrets:
            self.add_secret(secret)

    @property
    def is_json(self) -> bool:
        return isinstance(self._inner, _JsonFormatter)

    def add_secret(self, secret: str) -> None:
        if secret and secret not in self._given:
            self._given.add(secret)
            found = set(self._secrets) | _variants(secret)
            self._secrets = sorted(found, key=len, reverse=True)

    def show_source_of(self, status: ConnectorStatus) -> None:
        """Add ``source_id`` (from ``status``, once registered) to every JSON line."""
        if isinstance(self._inner, _JsonFormatter):
            self._inner.status = status

    def redact(self, text: str) -> str:
        """``text`` with every registered secret blanked (for output that is not a log line)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(self._inner.format(record))


_installed: RedactingFormatter | None = None


def installed_formatter() -> RedactingFormatter | None:
    """The formatter :func:`configure_logging` installed, if it ran."""
    return _installed


def redact(text: str) -> str:
    """``text`` without the secrets logging knows of (for what leaves by another way)."""
    return text if _installed is None else _installed.redact(text)


def configure_logging(
    level: str = "info", fmt: LogFormat = "text", secrets: Iterable[str] = ()
) -> RedactingFormatter:
    """Send logs to stderr (journald and container runtimes collect it)."""
    global _installed
    inner: logging.Formatter = _JsonFormatter() if fmt == "json" else _TextFormatter()
    formatter = _installed = RedactingFormatter(inner, secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries stay at INFO or above; the connector's own loggers follow --log-level.
    for noisy in ("websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return formatter


def json_line(
    message: str, *, logger: str = "connector.cli", level: int = logging.ERROR, **fields: Any
) -> str:
    """One JSON log line, formatted (and redacted) as configured logging would write it.

    For what is printed before or instead of logging: start-up errors.
    """
    record = logging.LogRecord(logger, level, "", 0, message, None, None)
    record.__dict__.update(fields)
    formatter = _installed if _installed is not None and _installed.is_json else None
    if formatter is None:
        formatter = RedactingFormatter(_JsonFormatter())
    return formatter.format(record)
