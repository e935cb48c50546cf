"""Where do plain ``def`` handlers run? Threads that a stuck call cannot use up.

A synchronous handler method runs in a worker thread so it never blocks the
connection. A thread cannot be interrupted: a call that outlives its
request's deadline keeps its thread until it returns (a query without a
timeout may never return). So the pool is sized for the calls that can be
in flight *plus* a number of spare threads, and a call abandoned at its
deadline is counted as *stuck* until its thread comes back:

- while stuck calls fit in the spares, every in-flight request still finds a
  thread, so the connector keeps serving;
- once they do not, the pool is *exhausted*: ``on_change`` says so, and the
  daemon reports itself unhealthy (``/readyz`` and ``/healthz`` 503, the
  systemd watchdog stops), so an orchestrator restarts the process, the only
  way to get a stuck thread back.

The threads are daemon threads: a stuck one never keeps the process from
exiting after SIGTERM.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["HandlerThreads"]

log = logging.getLogger("connector.workers")

_Work = tuple[concurrent.futures.Future[Any], Callable[[], Any]]


class HandlerThreads:
    """``size`` threads for calls in flight and ``spare`` more for stuck ones, on demand."""

    def __init__(
        self,
        size: int,
        spare: int,
        *,
        on_change: Callable[[int, bool], None] | None = None,
        name: str = "ablo-handler",
    ) -> None:
        self.size = size
        self.spare = spare
        self.stuck = 0
        self.on_change = on_change
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for work
        self._queued = 0  # work not taken by a thread yet
        self._lock = threading.Lock()
        self._closed = False

    @property
    def exhausted(self) -> bool:
        """Stuck calls hold more threads than there are spares: an in-flight call may wait."""
        return self.stuck > self.spare

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` in a worker thread, with the caller's context vars."""
        if self._closed:
            raise RuntimeError("the handler threads are closed")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        work = functools.partial(contextvars.copy_context().run, function, *args)
        self._submit((future, work))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.done():  # the thread still runs it: count it until it returns
                self._stuck(function, asyncio.get_running_loop(), future)
            raise

    def _submit(self, work: _Work) -> None:
        self._work.put(work)
        with self._lock:
            self._queued += 1
            start = self._queued > self._idle and len(self._threads) < self.size + self.spare
            if start:
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads) + 1}", daemon=True
                )
                self._threads.append(thread)
        if start:
            thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._work.get()
            with self._lock:
                self._idle -= 1
                if item is not None:
                    self._queued -= 1
            if item is None:
                return
            future, work = item
            if future.set_running_or_notify_cancel():
                try:
                    result = work()
                except BaseException as error:  # handed to the awaiting request
                    future.set_exception(error)
                else:
                    future.set_result(result)
            del item, future, work

    def _stuck(
        self,
        function: Callable[..., Any],
        loop: asyncio.AbstractEventLoop,
        future: concurrent.futures.Future[Any],
    ) -> None:
        self.stuck += 1
        log.warning(
            "handler %s did not return by its deadline; its thread is stuck until it does "
            "(%d stuck, %d spare threads)",
            getattr(function, "__name__", "call"),
            self.stuck,
            self.spare,
        )
        if self.exhausted:
            log.error(
                "every spare handler thread is stuck: requests may wait for a thread; "
                "reporting unhealthy so the process is restarted"
            )
        self._changed()

        def returned(_: concurrent.futures.Future[Any]) -> None:
            loop.call_soon_threadsafe(self._unstuck)

        future.add_done_callback(returned)

    def _unstuck(self) -> None:
        self.stuck -= 1
        log.info("a stuck handler thread returned (%d still stuck)", self.stuck)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.stuck, self.exhausted)

    def close(self) -> None:
        """Let idle threads end; a stuck one ends when its call returns (or with the process)."""
        self._closed = True
        for _ in range(len(self._threads)):
            self._work.put(None)
