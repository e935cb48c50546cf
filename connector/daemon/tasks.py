"""How does a request get its task? Its own, from its first step.

:func:`start_task` gives a request's coroutine a task of its own before
any of it runs, so whatever a handler ties to ``asyncio.current_task()``
(an ``asyncio.timeout``, an anyio cancel scope, the request's deadline) is
tied to the request, and its context variables live in the task's context.

On Python 3.12 and later the task starts eagerly (``eager_start=True``):
its first step runs at once, as the current task, and a request that never
waits (the handler answers from memory, the answer is buffered) finishes
inside ``data_received``, without an event-loop turn of its own. Python
3.11 has no eager start, and the task runs from the next loop turn. (The
same contract by hand on 3.11, the first step run here with the new task
entered as current, measured 0.45x the echo peer at 64 in flight against
0.51x for the plain task, for 1.24x against 1.29x at 1 in flight:
``bench/run.py``.)
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from ..serve.deadlines import note_cancelled_by_itself

__all__ = ["start_task"]

log = logging.getLogger("connector.connection")


class _RequestTask(asyncio.Task[Any]):
    """A request's task, which remembers when its own code cancels it, so the
    dispatcher answers that as a handler failure (see ``connector.serve.deadlines``)."""

    def cancel(self, msg: Any = None) -> bool:
        try:
            running = asyncio.current_task()
        except RuntimeError:  # called outside the event loop's thread
            running = None
        if running is self:
            note_cancelled_by_itself(self)
        return super().cancel(msg)


def _log_failure(error: BaseException) -> None:
    log.error("a request failed in its first step", exc_info=error)


if sys.version_info >= (3, 12):

    def start_task(coro: Coroutine[Any, Any, object]) -> asyncio.Task[Any] | None:
        """A task for ``coro``, its first step run now; None if that step finished it."""
        task = _RequestTask(coro, loop=asyncio.get_running_loop(), eager_start=True)
        if not task.done():
            return task
        if not task.cancelled() and (error := task.exception()) is not None:
            _log_failure(error)
        return None

else:

    def start_task(coro: Coroutine[Any, Any, object]) -> asyncio.Task[Any] | None:
        """A task for ``coro``, from the next loop turn (3.11 has no eager start)."""
        return _RequestTask(coro, loop=asyncio.get_running_loop())
