"""When must a request give up? Request deadlines, and starting requests eagerly.

Two mechanisms that only work together, so they live in one file:

- :class:`Deadlines` cancels the task of a request that outlives the
  timeout, with one timer for all requests.
- :func:`start_eagerly` runs a request on the *caller's* task (the
  connection's reader) until it first has to wait, so most requests finish
  without a task of their own.

The contract between them: while a request runs eagerly it must never
cancel the reader's task. So :meth:`Deadlines.enter` looks at
``_eager_deadlines``; when it is set, the deadline is created without a
task and collected there, and :func:`start_eagerly` hands every collected
deadline the request's own task once it has one. A request that finished
eagerly never needed cancelling.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["Deadline", "Deadlines", "start_eagerly"]


class Deadline:
    """One request's deadline: ``expired`` once its task was cancelled for it."""

    __slots__ = ("expired", "finished", "task", "when")

    def __init__(self, when: float, task: asyncio.Task[Any] | None) -> None:
        self.when = when
        self.task = task
        self.finished = False
        self.expired = False


# Set while a request runs eagerly on the reader's task (see the module docstring).
_eager_deadlines: contextvars.ContextVar[list[Deadline] | None] = contextvars.ContextVar(
    "ablo_eager_deadlines", default=None
)


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
        eager = _eager_deadlines.get()
        if eager is None:
            entry = Deadline(loop.time() + self.timeout, asyncio.current_task())
        else:
            entry = Deadline(loop.time() + self.timeout, None)
            eager.append(entry)
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


def start_eagerly(coro: Coroutine[Any, Any, object]) -> asyncio.Task[None] | None:
    """Run ``coro`` now, on the caller's task, until it first has to wait.

    Most requests never wait (the handler answers from memory, the response
    is buffered): they finish here, without a task or a loop turn of their
    own, and None is returned. One that does wait continues in a new task,
    which is returned; its deadlines move to that task. (Python 3.12's eager
    tasks, for 3.11.)
    """
    deadlines: list[Deadline] = []
    token = _eager_deadlines.set(deadlines)
    try:
        awaited = coro.send(None)
    except StopIteration:
        return None
    finally:
        _eager_deadlines.reset(token)
    task = asyncio.get_running_loop().create_task(_resume(coro, awaited))
    for entry in deadlines:
        if not entry.finished:
            entry.task = task
    return task


@types.coroutine
def _resume(coro: Coroutine[Any, Any, object], awaited: Any) -> Generator[Any, Any, None]:
    """Drive an already-started coroutine from inside a task: what the task
    sends or throws goes on to ``coro``, what ``coro`` waits on goes back out."""
    while True:
        try:
            value = yield awaited
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as error:
            try:
                awaited = coro.throw(error)
            except StopIteration:
                return
        else:
            try:
                awaited = coro.send(value)
            except StopIteration:
                return
