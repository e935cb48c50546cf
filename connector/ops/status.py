"""Where is the connector now? A small, observable record of its state.

The connection and the supervisor write it; health checks, metrics, systemd
notifications and embedding programs read it or subscribe to changes. An
:class:`Observer` hears of each request and connection attempt as it ends.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["AnsweredRequest", "ConnectorStatus", "Observer", "State"]


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
    def operation(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def replayed(self) -> bool: ...


class Observer:
    """Hooks for counting what happens; the defaults do nothing.

    The metrics exporter overrides them. They run on the event loop, on the
    request path, so an implementation must be cheap and must not block.
    """

    def request_done(self, response: AnsweredRequest, seconds: float) -> None:
        """One request answered (any status)."""

    def frame_rejected(self, reason: str) -> None:
        """A frame was refused: ``malformed``, ``invalid_request``, ``oversize`` or
        ``oversize_closed`` (too large to read: the connection was closed)."""

    def attempt_ended(self, outcome: str) -> None:
        """A connection attempt ended: ``ready`` when it got that far, else why not."""


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

    def set(self, state: State, *, error: str | None = None, message: str | None = None) -> None:
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
