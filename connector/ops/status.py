"""Where is the connector now? A small, observable record of its state.

The connection and the supervisor write it; health checks, metrics, systemd
notifications and embedding programs read it or subscribe to changes.
:class:`Observer` objects hear of each request and connection attempt:
metrics, tracing and the inspector each are one, and :func:`observing`
joins them into what the connection calls.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..wire.frames import RequestFrame

__all__ = [
    "AnsweredRequest",
    "ConnectorStatus",
    "Observer",
    "State",
    "announces_starts",
    "observing",
]


class State(enum.StrEnum):
    STARTING = "starting"
    STANDBY = "standby"
    CONNECTING = "connecting"
    READY = "ready"
    BACKOFF = "backoff"
    STOOD_DOWN = "stood_down"
    DRAINING = "draining"
    STOPPED = "stopped"


class AnsweredRequest(Protocol):
    """What observers and spans learn of one answered request (the dispatcher's ``Answer``)."""

    @property
    def status(self) -> int: ...
    @property
    def body(self) -> str: ...
    @property
    def operation(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def replayed(self) -> bool: ...


class Observer:
    """Hooks for what happens to requests and connections; the defaults do nothing.

    Metrics, tracing and the inspector override the hooks they need. They
    run on the event loop, on the request path, so an implementation must be
    cheap and must not block. A request's hooks run in the request's own
    task, in order: :meth:`request_started`, then :meth:`request_done` once
    its answer is handed to the socket, or :meth:`request_abandoned` if the
    task ends without an answer (cancelled while draining). The frame and
    the answer are handed over as they are, never copied: an observer that
    keeps a body keeps a reference to the string that was sent.
    """

    def request_started(self, frame: RequestFrame) -> None:
        """A request frame is about to be served."""

    def request_done(self, frame: RequestFrame, answer: AnsweredRequest, seconds: float) -> None:
        """A request was answered (any status) after ``seconds``."""

    def request_abandoned(self, frame: RequestFrame, error: BaseException) -> None:
        """A request's task ended without an answer."""

    def frame_rejected(self, reason: str) -> None:
        """A frame was refused: ``malformed``, ``invalid_request``, ``oversize`` or
        ``oversize_closed`` (too large to read: the connection was closed)."""

    def attempt_ended(self, outcome: str) -> None:
        """A connection attempt ended: ``ready`` when it got that far, else why not."""


_HOOKS = ("request_started", "request_done", "request_abandoned", "frame_rejected", "attempt_ended")


def _overrides(observer: Observer, hook: str) -> bool:
    return getattr(type(observer), hook) is not getattr(Observer, hook)


class _Observers(Observer):
    """Several observers as one; each hook calls only those that override it."""

    def __init__(self, observers: list[Observer]) -> None:
        self._members = observers
        calls = {
            hook: tuple(getattr(o, hook) for o in observers if _overrides(o, hook))
            for hook in _HOOKS
        }
        self._started = calls["request_started"]
        self._done = calls["request_done"]
        self._abandoned = calls["request_abandoned"]
        self._rejected = calls["frame_rejected"]
        self._attempts = calls["attempt_ended"]

    def __repr__(self) -> str:
        return f"Observers({', '.join(type(o).__name__ for o in self._members)})"

    def request_started(self, frame: RequestFrame) -> None:
        for call in self._started:
            call(frame)

    def request_done(self, frame: RequestFrame, answer: AnsweredRequest, seconds: float) -> None:
        for call in self._done:
            call(frame, answer, seconds)

    def request_abandoned(self, frame: RequestFrame, error: BaseException) -> None:
        for call in self._abandoned:
            call(frame, error)

    def frame_rejected(self, reason: str) -> None:
        for call in self._rejected:
            call(reason)

    def attempt_ended(self, outcome: str) -> None:
        for call in self._attempts:
            call(outcome)


def observing(observers: Iterable[Observer | None]) -> Observer | None:
    """What the connection calls for ``observers``: None when nothing watches (the
    request path then pays nothing), the one observer itself, or all of them."""
    present = [o for o in observers if o is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return _Observers(present)


def announces_starts(observer: Observer | None) -> bool:
    """Whether ``observer`` wants :meth:`Observer.request_started` (else it is never called)."""
    if observer is None:
        return False
    if isinstance(observer, _Observers):
        return bool(observer._started)
    return _overrides(observer, "request_started")


@dataclass
class ConnectorStatus:
    """The connector's current state and identity, plus a few counters."""

    state: State = State.STARTING
    source_id: str | None = None
    organization_id: str | None = None
    environment: str | None = None
    ready_since: float | None = None
    #: Why the connection last failed (``dns``, ``refused``, ``tls``, an engine
    #: code, ...) and what happened, in words; cleared once ready again.
    last_error: str | None = None
    last_error_message: str | None = None
    #: The connection attempt under way or last made, counting from 1 since
    #: the connector was last ready (or started).
    attempt: int = 0
    #: When the next connection attempt starts (Unix seconds), while it backs
    #: off or stands down; None otherwise, and while it waits until stopped.
    next_attempt_at: float | None = None
    connects: int = 0
    in_flight: int = 0
    stuck_handlers: int = 0
    handlers_exhausted: bool = False
    #: What the source's own probe said (see ``DataSource.probe``): None until
    #: it has run (or when the source has none), then whether it can serve.
    source_healthy: bool | None = None
    source_error: str | None = None
    source_error_message: str | None = None
    #: What the source measured at its last probe (the SQL adapter's outbox),
    #: by series name (see ``metrics.SOURCE_GAUGES``).
    source_gauges: dict[str, float] = field(default_factory=dict)
    #: Since when it has been serving (see :attr:`serving`), on the monotonic clock.
    serving_since: float | None = None
    _listeners: list[Callable[[ConnectorStatus], None]] = field(default_factory=list, repr=False)
    _ready_event: asyncio.Event | None = field(default=None, repr=False)
    _attempts_restart: bool = field(default=True, repr=False)

    @property
    def is_ready(self) -> bool:
        return self.state is State.READY

    @property
    def seconds_ready(self) -> float | None:
        """Seconds it has been serving (what ``/readyz`` calls ready), None while it is not."""
        return None if self.serving_since is None else time.monotonic() - self.serving_since

    @property
    def healthy(self) -> bool:
        """False once every spare handler thread is stuck: only a restart frees them."""
        return not self.handlers_exhausted and self.state is not State.STOPPED

    @property
    def serving(self) -> bool:
        """What ``/readyz`` says: ready, the source has not reported that it cannot
        serve, and a request can still get a handler thread."""
        return (
            self.state is State.READY
            and self.source_healthy is not False
            and not self.handlers_exhausted
        )

    @property
    def shown_state(self) -> str:
        """The state ``/readyz`` shows: the connection's, except that a ready connection
        whose source cannot serve is ``source_down`` (or ``handlers_stuck``), never ``ready``."""
        if self.state is State.READY:
            if self.handlers_exhausted:
                return "handlers_stuck"
            if self.source_healthy is False:
                return "source_down"
        return self.state.value

    def _serving_changed(self) -> bool:
        """Start or stop the serving clock; whether :attr:`serving` flipped."""
        serving = self.serving
        if serving == (self.serving_since is not None):
            return False
        self.serving_since = time.monotonic() if serving else None
        return True

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener(self)

    def set_stuck_handlers(self, stuck: int, exhausted: bool) -> None:
        changed = exhausted != self.handlers_exhausted
        self.stuck_handlers = stuck
        self.handlers_exhausted = exhausted
        self._serving_changed()
        if changed:
            self._notify()

    def subscribe(self, listener: Callable[[ConnectorStatus], None]) -> None:
        self._listeners.append(listener)

    def set(
        self,
        state: State,
        *,
        error: str | None = None,
        message: str | None = None,
        next_attempt_at: float | None = None,
    ) -> None:
        self.next_attempt_at = next_attempt_at
        if error is not None:
            self.last_error = error
            self.last_error_message = message
        if state is State.READY and self.state is not State.READY:
            self.ready_since = time.monotonic()
            self.connects += 1
            self.last_error = self.last_error_message = None
        elif state is not State.READY:
            self.ready_since = None
        if state is State.CONNECTING:
            self.attempt = 1 if self._attempts_restart else self.attempt + 1
            self._attempts_restart = False
        elif state in (State.READY, State.STANDBY):
            self._attempts_restart = True
        changed = state is not self.state
        self.state = state
        self._serving_changed()
        if self._ready_event is not None:
            # Set while ready, and once stopped: a waiter must not wait forever.
            if state in (State.READY, State.STOPPED):
                self._ready_event.set()
            else:
                self._ready_event.clear()
        if changed:
            self._notify()

    async def wait_ready(self) -> None:
        """Return once ready, or once stopped (then :attr:`is_ready` is False)."""
        if self._ready_event is None:
            self._ready_event = asyncio.Event()
            if self.state in (State.READY, State.STOPPED):
                self._ready_event.set()
        await self._ready_event.wait()

    def set_source_health(self, error: str | None, message: str | None = None) -> None:
        """Record what the source's probe said: ``error`` None means it can serve."""
        self.source_healthy = error is None
        self.source_error = error
        self.source_error_message = message
        if self._serving_changed():
            self._notify()

    def as_dict(self) -> dict[str, object]:
        seconds = self.seconds_ready
        # The connection's failure first; once ready, the source's own.
        error: str | None
        message: str | None
        if self.last_error is not None:
            error, message = self.last_error, self.last_error_message
        else:
            error, message = self.source_error, self.source_error_message
        payload: dict[str, object] = {
            "state": self.shown_state,
            "ready": self.serving,
            "sourceId": self.source_id,
            "organizationId": self.organization_id,
            "environment": self.environment,
            "secondsReady": None if seconds is None else round(seconds, 3),
            "lastError": error,
            "lastErrorMessage": message,
            "inFlight": self.in_flight,
            "stuckHandlerThreads": self.stuck_handlers,
        }
        if self.source_healthy is not None:
            payload["sourceHealthy"] = self.source_healthy
        if self.handlers_exhausted:
            payload["reason"] = "handler_threads_stuck"
        return payload
