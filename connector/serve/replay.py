"""Has this ``webhook-id`` been seen? Answers kept by message id, within a byte budget.

The engine retries a request with the same ``webhook-id`` when its answer
did not arrive (a drop, a timeout). What must be remembered differs by
operation:

- a copy that arrives while the first one *runs* waits for the first one's
  answer, whatever the operation: the handler runs once;
- once finished, only **commit** answers are kept: a commit must never
  apply twice, while a read (load, list, events) is safe to run again and
  its answer may be large (a page of rows), so it is not kept at all.

Kept answers expire after the window (the signature tolerance: an older
copy fails verification anyway) and the total is bounded by
``max_bytes``, oldest first. A timer frees expired answers even when no
traffic arrives. This is a fast path, not the guarantee: a commit whose
answer was evicted, or that arrives after a restart, reaches the handler
again, which must be idempotent on ``correlation_id`` (the SQL adapter's
ledger is).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import OrderedDict
from typing import Final, TypeAlias

from .answer import Answer

__all__ = ["ENTRY_OVERHEAD", "FirstCopyCancelled", "ReplayCache"]

# What one kept answer costs beyond its body: the key, the tuple, the dict
# slot (measured at about 250 bytes), so a budget holds for tiny answers too.
ENTRY_OVERHEAD: Final = 256


def _cost(body: str) -> int:
    # What the body occupies in memory: 1, 2 or 4 bytes a character (CPython
    # stores a string by its widest character), not its length.
    return sys.getsizeof(body) + ENTRY_OVERHEAD


class FirstCopyCancelled(Exception):
    """The first copy of a request was cancelled before it produced an answer:
    a copy waiting for it must run the request itself."""


_Kept: TypeAlias = tuple[float, int, str, str | None, str | None, str | None]


class ReplayCache:
    """Requests in flight by ``webhook-id``, and finished commit answers within the window."""

    def __init__(self, window: float, max_bytes: int) -> None:
        self._window = window
        self.max_bytes = max_bytes
        self.kept_bytes = 0
        # A future only once a duplicate waits for it: most requests have none.
        self._running: dict[str, asyncio.Future[Answer] | None] = {}
        # Finished answers as flat tuples (expires, status, body, operation,
        # model, error), oldest first: one object per entry, not six.
        self._done: OrderedDict[str, _Kept] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    @property
    def kept(self) -> int:
        """How many finished answers are kept."""
        return len(self._done)

    def lookup(self, key: str) -> Answer | asyncio.Future[Answer] | None:
        """The stored answer (marked replayed), a future of the running one, or None."""
        if key in self._running:
            waiter = self._running[key]
            if waiter is None:
                waiter = self._running[key] = asyncio.get_running_loop().create_future()
            return waiter
        kept = self._done.get(key)
        if kept is None:
            return None
        expires, status, body, operation, model, error = kept
        if expires <= time.monotonic():
            return None  # the timer has not run yet; it will free the entry
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
        if answer.operation == "commit" and answer.status < 500:
            self._keep(key, answer)

    def _keep(self, key: str, answer: Answer) -> None:
        size = _cost(answer.body)
        if size > self.max_bytes:
            return  # larger than the whole budget: the handler's idempotency must do
        previous = self._done.pop(key, None)
        if previous is not None:
            self.kept_bytes -= _cost(previous[2])
        expires = time.monotonic() + self._window
        self._done[key] = (
            expires, answer.status, answer.body, answer.operation, answer.model, answer.error,
        )  # fmt: skip
        self.kept_bytes += size
        while self.kept_bytes > self.max_bytes:
            _, evicted = self._done.popitem(last=False)
            self.kept_bytes -= _cost(evicted[2])
        loop = asyncio.get_running_loop()
        if self._timer is None or self._timer_loop is not loop:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer_loop = loop
        oldest = next(iter(self._done.values()), None)
        if oldest is None:
            self._timer = None
            return
        delay = max(0.0, oldest[0] - time.monotonic())
        self._timer = loop.call_later(delay, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        done = self._done
        while done:
            key, kept = next(iter(done.items()))
            if kept[0] > now:
                break
            del done[key]
            self.kept_bytes -= _cost(kept[2])
        self._arm(loop)

    def close(self) -> None:
        """Forget every kept answer and stop the expiry timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._done.clear()
        self.kept_bytes = 0
