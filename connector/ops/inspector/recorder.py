"""What did the connector just serve? The recent requests, kept within bounds.

The :class:`Recorder` keeps the newest ``max_requests`` entries and at most
``max_bytes`` of their bodies (as Python holds them), dropping the oldest
first. Recording an answered request costs one small object and a deque
append: the request and answer bodies are the strings that were sent,
referenced rather than copied, except that a body over
:data:`BODY_KEPT` characters keeps only its beginning. Everything a page
shows (summaries, shortened headers, pretty JSON) is computed when asked,
off the request path (see :mod:`.views`).

Log lines are tied to a request through a context variable set in the
request's own task (worker threads get a copy of it), so a handler's own
``log.info`` lines are found too.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Final

from ..status import AnsweredRequest

__all__ = ["BODY_KEPT", "Entry", "LogCapture", "Recorder", "capturing_lines", "current_lines"]

#: Characters of one body an entry keeps; the rest is dropped and its size noted.
BODY_KEPT: Final = 64 * 1024
#: Log lines one entry keeps, each at most LINE_KEPT characters.
LINES_KEPT: Final = 50
LINE_KEPT: Final = 4000

# The log lines of the request the current task (or its worker thread) serves.
_lines: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "ablo_inspected_lines", default=None
)


def capturing_lines() -> list[str]:
    """Start collecting the current task's log lines; returns the list they go to."""
    lines: list[str] = []
    _lines.set(lines)
    return lines


def current_lines() -> list[str] | None:
    """The list :func:`capturing_lines` started in this task, if any."""
    return _lines.get()


def _utf8_size(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


class Entry:
    """One request and its answer, as the inspector keeps them."""

    __slots__ = (
        "_summary",
        "answer",
        "answer_body",
        "answer_size",
        "cost",
        "headers",
        "id",
        "lines",
        "method",
        "number",
        "replay_of",
        "request_body",
        "request_size",
        "seconds",
        "started_at",
        "url",
    )

    def __init__(
        self,
        number: int,
        request_id: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: str,
        answer: AnsweredRequest,
        seconds: float,
        lines: list[str] | None,
        replay_of: str | None = None,
    ) -> None:
        self.number = number
        self.id = request_id
        self.method = method
        self.url = url
        self.headers = headers
        self.answer = answer
        self.seconds = seconds
        self.started_at = time.time() - seconds
        self.lines = lines
        self.replay_of = replay_of
        self._summary: str | None = None
        # None: the whole body is kept, and its size is computed when shown.
        self.request_size: int | None = None
        self.answer_size: int | None = None
        answer_body = answer.body
        if len(body) > BODY_KEPT:
            self.request_size = _utf8_size(body)
            body = body[:BODY_KEPT]
        if len(answer_body) > BODY_KEPT:
            self.answer_size = _utf8_size(answer_body)
            answer_body = answer_body[:BODY_KEPT]
        self.request_body = body
        self.answer_body = answer_body
        self.cost = sys.getsizeof(body) + sys.getsizeof(answer_body)

    @property
    def request_truncated(self) -> bool:
        return self.request_size is not None

    @property
    def answer_truncated(self) -> bool:
        return self.answer_size is not None


class Recorder:
    """The newest entries, within a count and a byte budget; tells subscribers of each."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.kept_bytes = 0
        self._entries: collections.deque[Entry] = collections.deque()
        self._numbers = itertools.count(1)
        self.listeners: list[Callable[[Entry], None]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        request_id: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: str,
        answer: AnsweredRequest,
        seconds: float,
        lines: list[str] | None,
        replay_of: str | None = None,
    ) -> Entry:
        entry = Entry(
            next(self._numbers), request_id, method, url, headers, body, answer, seconds, lines,
            replay_of,
        )  # fmt: skip
        entries = self._entries
        entries.append(entry)
        self.kept_bytes += entry.cost
        while len(entries) > self.max_requests or (
            self.kept_bytes > self.max_bytes and len(entries) > 1
        ):
            self.kept_bytes -= entries.popleft().cost
        if self.listeners:
            for listener in self.listeners:
                listener(entry)
        return entry

    def newest_first(self) -> list[Entry]:
        return list(reversed(self._entries))

    def find(self, request_id: str) -> Entry | None:
        """The newest entry of this request id (an engine may reuse one)."""
        for entry in reversed(self._entries):
            if entry.id == request_id:
                return entry
        return None


class LogCapture(logging.Handler):
    """Keeps the log lines emitted while a request is served, with that request.

    ``redact`` blanks secrets; ``formatter`` (the one logging writes with, when
    there is one) formats the line as the operator's logs show it.
    """

    def __init__(self, redact: Callable[[str], str], formatter: logging.Formatter) -> None:
        super().__init__(level=logging.DEBUG)
        self._redact = redact
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        lines = _lines.get()
        if lines is None or len(lines) >= LINES_KEPT:
            return
        try:
            text = self._redact(self.format(record))
        except Exception:  # a line that cannot be formatted is not worth a failure
            return
        lines.append(text[:LINE_KEPT])
