"""How does an operator read it? Logging set-up with secrets redacted.

Every line goes through :class:`RedactingFormatter`, which replaces each
registered secret (the API key) wherever it appears, tracebacks included:
the code never logs the key, and this makes sure a handler's exception
message or a library's debug line cannot either.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Literal

from .._redact import REDACTED

__all__ = ["LogFormat", "RedactingFormatter", "configure_logging"]

LogFormat = Literal["text", "json"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    """Formats with ``inner``, then blanks out every secret."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._inner = inner
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def add_secret(self, secret: str) -> None:
        if secret and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with every registered secret blanked (for output that is not a log line)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(self._inner.format(record))


def configure_logging(
    level: str = "info", fmt: LogFormat = "text", secrets: Iterable[str] = ()
) -> RedactingFormatter:
    """Send logs to stderr (journald and container runtimes collect it)."""
    inner: logging.Formatter = (
        _JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    formatter = RedactingFormatter(inner, secrets)
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
