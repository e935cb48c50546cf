"""Has this ``webhook-id`` been seen? Answers kept by message id.

The engine retries a request with the same ``webhook-id`` when its answer
did not arrive (a drop, a timeout). A copy that arrives while the first one
runs waits for the first one's answer; a copy that arrives after it
finished gets the stored answer. Either way the handler runs once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TypeAlias

from .answer import Answer

__all__ = ["FirstCopyCancelled", "ReplayCache"]


class FirstCopyCancelled(Exception):
    """The first copy of a request was cancelled before it produced an answer:
    a copy waiting for it must run the request itself."""


_Kept: TypeAlias = tuple[float, int, str, str | None, str | None, str | None]


class ReplayCache:
    """Answers by ``webhook-id``: in flight, or finished within the window.

    Only answers below 500 are kept: a 5xx tells the engine to retry, and the
    retry must run the handler again.
    """

    def __init__(self, window: float, capacity: int) -> None:
        self._window = window
        self._capacity = capacity
        # A future only once a duplicate waits for it: most requests have none.
        self._running: dict[str, asyncio.Future[Answer] | None] = {}
        # Finished answers as flat tuples (expires, status, body, operation,
        # model, error): at 10,000 entries every object per entry costs ~1 MiB.
        self._done: OrderedDict[str, _Kept] = OrderedDict()

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    def lookup(self, key: str) -> Answer | asyncio.Future[Answer] | None:
        """The stored answer (marked replayed), a future of the running one, or None."""
        if key in self._running:
            waiter = self._running[key]
            if waiter is None:
                waiter = self._running[key] = asyncio.get_running_loop().create_future()
            return waiter
        self._purge(time.monotonic())
        kept = self._done.get(key)
        if kept is None:
            return None
        _, status, body, operation, model, error = kept
        return Answer(status, body, operation, model, error, replayed=True)

    def start(self, key: str) -> None:
        self._running[key] = None

    def finish(self, key: str, answer: Answer | None) -> None:
        """Record how the run of ``key`` ended (None: cancelled without an answer)."""
        waiter = self._running.pop(key)
        if answer is None:
            if waiter is not None:
                waiter.set_exception(FirstCopyCancelled())
                waiter.exception()  # waiters see it; nobody else must
            return
        if waiter is not None:
            waiter.set_result(answer)
        if answer.status < 500 and self._capacity > 0:
            self._done[key] = (
                time.monotonic() + self._window,
                answer.status,
                answer.body,
                answer.operation,
                answer.model,
                answer.error,
            )
            while len(self._done) > self._capacity:
                self._done.popitem(last=False)

    def _purge(self, now: float) -> None:
        while self._done:
            key, kept = next(iter(self._done.items()))
            if kept[0] > now:
                break
            del self._done[key]
