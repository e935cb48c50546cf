"""Can the source serve? Its own probe, called every few seconds.

A source may define ``probe()`` (see :meth:`connector.DataSource.probe`):
the SQL adapter's runs ``SELECT 1``. :class:`SourceProbe` calls it on a
schedule, never two at once, and records the outcome in the
:class:`~.status.ConnectorStatus`, which ``/readyz`` and
``ablo_connector_source_up`` show. It logs only the changes: a WARNING when
the source stops being able to serve, an INFO line when it can again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Final

from ..errors import SourceError
from .status import ConnectorStatus

__all__ = ["SourceProbe"]

log = logging.getLogger("connector.probe")

_MAX_MESSAGE: Final = 300


class SourceProbe:
    """Runs ``probe`` every ``interval`` seconds until closed.

    A plain ``def`` probe runs on a thread of its own, the same one every
    time (a probe keeping a per-thread connection opens it once): one that
    hangs (a database that accepts and never answers) is reported as timed
    out, and no second call starts until it returns, so hung calls never
    pile up. The thread is a daemon one, so a hung probe never keeps the
    process from exiting once the connector has stopped.
    """

    def __init__(
        self,
        probe: Callable[[], Any],
        status: ConnectorStatus,
        interval: float,
        *,
        redact: Callable[[str], str] = lambda text: text,
        gauges: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        self._gauges = gauges
        self._probe = probe
        self._status = status
        self._interval = interval
        self._redact = redact
        self._is_async = inspect.iscoroutinefunction(probe)
        self._running: Future[Any] | None = None
        self._calls: queue.SimpleQueue[Future[Any] | None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        task, self._task = self._task, None
        if self._calls is not None:
            self._calls.put(None)  # the thread ends after the call it runs, if any
            self._calls = None
        if task is not None:
            task.cancel()
            # Not suppress(CancelledError): a cancellation of the caller itself
            # must still reach it.
            await asyncio.wait({task})

    async def _loop(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._interval)

    async def check(self) -> None:
        """Call the probe once and record what it said."""
        try:
            # Not wait_for: on Python 3.11 it drops a cancellation that lands
            # as the call returns, and close() would wait on this loop forever.
            async with asyncio.timeout(self._interval):
                await self._call()
        except TimeoutError:
            self._record(
                "probe_timeout", f"the source's probe did not answer within {self._interval:g} s"
            )
        except SourceError as error:
            self._record(error.code, error.message or error.code)
        except Exception as error:
            self._record("probe_failed", f"{type(error).__name__}: {error}")
        else:
            self._record(None, None)
        if self._gauges is not None:
            self._status.source_gauges = dict(self._gauges())

    async def _call(self) -> None:
        if self._is_async:
            await self._probe()
            return
        if self._running is None or self._running.done():
            if self._calls is None:
                self._calls = queue.SimpleQueue()
                threading.Thread(
                    target=_serve_calls,
                    args=(self._probe, self._calls),
                    name="ablo-probe",
                    daemon=True,
                ).start()
            self._running = Future()
            self._calls.put(self._running)
        # Cancelling this wait (a timeout) leaves a call that has started running.
        result = await asyncio.wrap_future(self._running)
        if inspect.isawaitable(result):
            await result

    def _record(self, error: str | None, message: str | None) -> None:
        status = self._status
        was_healthy, was_error = status.source_healthy, status.source_error
        if message is not None:
            message = self._redact(message)[:_MAX_MESSAGE]
        status.set_source_health(error, message)
        if error is not None and error != was_error:
            log.warning(
                "the source cannot serve: %s: %s (/readyz answers 503 until its probe passes)",
                error,
                message,
                extra={"error_code": error},
            )
        elif error is None and was_healthy is False:
            log.info("the source can serve again: its probe passes")


def _serve_calls(function: Callable[[], Any], calls: queue.SimpleQueue[Future[Any] | None]) -> None:
    while (future := calls.get()) is not None:
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(function())
        except BaseException as error:  # handed to the waiting loop, not lost in the thread
            future.set_exception(error)
