"""When must a request give up? One timer for every request's deadline.

:class:`Deadlines` cancels the task of a request that outlives the timeout.
Every request runs in a task of its own from its first step (see
``connector.daemon.tasks``), so the task a deadline cancels is always
the request's, never the reader's.

A request's task may be cancelled by three parties, and each ending is
answered differently: by its deadline (answered 504), by whoever runs the
request (a stop that will not wait: the cancellation goes on, unanswered,
and the engine retries), or by the handler itself, which cancels its own
task (a failure like any other, answered 500). The daemon's request tasks
record the last (:func:`note_cancelled_by_itself`); the dispatcher asks
(:func:`cancelled_itself`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Any

__all__ = ["Deadline", "Deadlines", "cancelled_itself", "note_cancelled_by_itself"]

_cancelled_by_itself: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def note_cancelled_by_itself(task: asyncio.Task[Any]) -> None:
    """Record that ``task``'s own code asked to cancel it."""
    _cancelled_by_itself.add(task)


def cancelled_itself(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` was cancelled by its own code (and is no more once asked)."""
    if task in _cancelled_by_itself:
        _cancelled_by_itself.discard(task)
        return True
    return False


class Deadline:
    """One request's deadline: ``expired`` once its task was cancelled for it."""

    __slots__ = ("expired", "finished", "task", "when")

    def __init__(self, when: float, task: asyncio.Task[Any] | None) -> None:
        self.when = when
        self.task = task
        self.finished = False
        self.expired = False


class Deadlines:
    """Cancels requests that outlive the timeout, with one timer for all of them.

    Every request gets the same timeout, so deadlines arrive in order: a FIFO
    and a single armed timer do what a timer per request did (asyncio.timeout
    cost about a tenth of the connector's CPU per request).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._queue: deque[Deadline] = deque()
        self._live = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self) -> Deadline:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop: forget the old one's timer
            self._loop, self._queue, self._live, self._timer = loop, deque(), 0, None
        entry = Deadline(loop.time() + self.timeout, asyncio.current_task())
        self._queue.append(entry)
        self._live += 1
        if self._timer is None:
            self._timer = loop.call_at(entry.when, self._expire)
        return entry

    def leave(self, entry: Deadline) -> None:
        entry.finished = True
        entry.task = None
        self._live -= 1
        queue = self._queue
        while queue and queue[0].finished:
            queue.popleft()
        if len(queue) > 2 * self._live + 64:
            # A slow request at the head holds finished ones behind it; drop them.
            self._queue = deque(e for e in queue if not e.finished)

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        queue = self._queue
        while queue and (queue[0].finished or queue[0].when <= now):
            entry = queue.popleft()
            if not entry.finished and entry.task is not None:
                entry.expired = True
                entry.task.cancel()
        if queue:
            self._timer = loop.call_at(queue[0].when, self._expire)
