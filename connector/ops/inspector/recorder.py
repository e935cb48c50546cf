"""What did the connector just serve? The recent requests, kept within bounds.

The :class:`Recorder` keeps the newest ``max_requests`` entries and at most
``max_bytes`` of their bodies (as Python holds them), dropping the oldest
first. Recording an answered request costs one small object and a deque
append: the request and answer bodies are the strings that were sent,
referenced rather than copied, except that a body over
:data:`BODY_KEPT` characters keeps only its beginning. Bodies are counted
by their length (four bytes a character unless ASCII: an upper bound of
their UTF-8 size and of what CPython holds), never measured. Everything a page shows (summaries, shortened headers, pretty
JSON) is computed when asked, off the request path (see :mod:`.views`).

Log lines are tied to a request through a context variable set in the
request's own task (worker threads get a copy of it), so a handler's own
``log.info`` lines are found too.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from ...wire.frames import RequestFrame
from ..status import AnsweredRequest

__all__ = ["BODY_KEPT", "Entry", "LogCapture", "Recorder", "capturing_lines", "current_lines"]

#: Characters of one body an entry keeps; the rest is dropped and its size noted.
BODY_KEPT: Final = 64 * 1024
#: Log lines one entry keeps, each at most LINE_KEPT characters.
LINES_KEPT: Final = 50
LINE_KEPT: Final = 4000

# The log lines of the request the current task (or its worker thread) serves,
# and which inspector collects them (several connectors may share a process).
_lines: contextvars.ContextVar[tuple[object, list[str]] | None] = contextvars.ContextVar(
    "ablo_inspected_lines", default=None
)


def capturing_lines(owner: object) -> list[str]:
    """Start collecting the current task's log lines for ``owner``; returns their list."""
    lines: list[str] = []
    _lines.set((owner, lines))
    return lines


def current_lines(owner: object) -> list[str] | None:
    """The list :func:`capturing_lines` started for ``owner`` in this task, if any."""
    current = _lines.get()
    return current[1] if current is not None and current[0] is owner else None


def _utf8_size(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


class Entry(NamedTuple):
    """One request and its answer, as the inspector keeps them.

    The recorder keeps each as a plain tuple of plain values: the strings
    that were sent (referenced, not copied), numbers, and the headers as
    one flat tuple of strings. The garbage collector stops visiting such a tuple (an
    exact tuple, not this class, holding no dict) once it has seen it, so
    the requests kept cost it nothing; keeping the request frame and the
    answer objects instead made every kept request a container it visits
    again and again, and measurably slowed the request path (see the
    README's figures). This class names the fields when the entry is read.
    A body over :data:`BODY_KEPT` characters keeps its beginning, and its
    size is noted.
    """

    number: int
    id: str
    method: str
    url: str
    #: The request's header names, then their values, in one flat tuple of strings.
    headers: tuple[str, ...]
    request_body: str
    #: The whole body's size in bytes when it was cut; None when kept whole.
    request_size: int | None
    status: int
    answer_body: str
    answer_size: int | None
    operation: str | None
    model: str | None
    error: str | None
    replayed: bool
    seconds: float
    ended_at: float
    lines: list[str] | None
    replay_of: str | None
    #: What it counts against the recorder's byte budget.
    cost: int

    @property
    def header_pairs(self) -> list[tuple[str, str]]:
        half = len(self.headers) // 2
        return list(zip(self.headers[:half], self.headers[half:], strict=True))

    @property
    def started_at(self) -> float:
        return self.ended_at - self.seconds

    @property
    def request_truncated(self) -> bool:
        return self.request_size is not None

    @property
    def answer_truncated(self) -> bool:
        return self.answer_size is not None


class Recorder:
    """The newest entries, within a count and a byte budget; tells listeners of each."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.kept_bytes = 0
        self._entries: collections.deque[tuple[Any, ...]] = collections.deque()
        self._added = 0
        self.listeners: list[Callable[[Entry], None]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        frame: RequestFrame,
        answer: AnsweredRequest,
        seconds: float,
        lines: list[str] | None,
        replay_of: str | None = None,
    ) -> None:
        """Keep one answered request (on the request path: as cheap as it gets)."""
        self._added += 1
        body = frame.body
        answer_body = answer.body
        request_size = answer_size = None
        if len(body) > BODY_KEPT:
            request_size = _utf8_size(body)
            body = body[:BODY_KEPT]
        if len(answer_body) > BODY_KEPT:
            answer_size = _utf8_size(answer_body)
            answer_body = answer_body[:BODY_KEPT]
        cost = (len(body) if body.isascii() else 4 * len(body)) + (
            len(answer_body) if answer_body.isascii() else 4 * len(answer_body)
        )
        record = (
            self._added,
            frame.id,
            frame.method,
            frame.url,
            (*frame.headers.keys(), *frame.headers.values()),
            body,
            request_size,
            answer.status,
            answer_body,
            answer_size,
            answer.operation,
            answer.model,
            answer.error,
            answer.replayed,
            seconds,
            time.time(),
            lines,
            replay_of,
            cost,
        )  # fmt: skip  (Entry's fields, in order)
        entries = self._entries
        entries.append(record)
        self.kept_bytes += cost
        if len(entries) > self.max_requests or self.kept_bytes > self.max_bytes:
            while len(entries) > self.max_requests or (
                self.kept_bytes > self.max_bytes and len(entries) > 1
            ):
                self.kept_bytes -= entries.popleft()[_COST]
        if self.listeners:
            entry = Entry._make(record)
            for listener in self.listeners:
                listener(entry)

    def newest_first(self) -> list[Entry]:
        return [Entry._make(record) for record in reversed(self._entries)]

    def newest(self) -> Entry | None:
        return Entry._make(self._entries[-1]) if self._entries else None

    def find(self, request_id: str) -> Entry | None:
        """The newest entry of this request id (an engine may reuse one)."""
        for record in reversed(self._entries):
            if record[_ID] == request_id:
                return Entry._make(record)
        return None


# Where Recorder.add puts them in its tuples (Entry's field order).
_ID: Final = Entry._fields.index("id")
_COST: Final = Entry._fields.index("cost")


class LogCapture(logging.Handler):
    """Keeps the log lines emitted while a request is served, with that request.

    ``redact`` blanks secrets; ``formatter`` (the one logging writes with, when
    there is one) formats the line as the operator's logs show it.
    """

    def __init__(
        self, owner: object, redact: Callable[[str], str], formatter: logging.Formatter
    ) -> None:
        super().__init__(level=logging.DEBUG)
        self._owner = owner
        self._redact = redact
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        lines = current_lines(self._owner)
        if lines is None or len(lines) >= LINES_KEPT:
            return
        try:
            text = self._redact(self.format(record))
        except Exception:  # a line that cannot be formatted is not worth a failure
            return
        lines.append(text[:LINE_KEPT])
