"""How do we stay connected, and how do we stop cleanly?

:class:`Connector` is the embedding API: ``await Connector(config,
source).run()`` dials, serves and reconnects until :meth:`Connector.stop` is
called or the task is cancelled. :class:`ReconnectPolicy` decides how long to
wait after each kind of failure; ``tenacity`` runs the loop. With an HA lock
the connector dials only while it holds the lock. Signals are the daemon's
business: see :mod:`.signals`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from typing import TYPE_CHECKING, Final

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from .._redact import REDACTED, url_secrets
from ..errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectFailure,
    ConnectionLost,
    ConnectorError,
    HandshakeRejected,
    ProtocolMismatch,
    RateLimited,
    Superseded,
)
from ..ops.logs import redact as redact_logged
from ..ops.probe import SourceProbe
from ..ops.status import ConnectorStatus, Observer, State, observing
from ..ops.systemd import SystemdNotifier
from ..ops.tracing import RequestTracing, request_tracing
from ..serve.answer import Answer
from ..serve.datasource import DataSource, overridden
from ..serve.dispatcher import Dispatcher
from ..wire.signing import Verifier, sign_request
from .config import Config
from .connection import Connection, InFlight
from .ha import LeaderLock, lock_from_url

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from ..ops.health import HealthServer
    from ..ops.inspector import Inspector
    from ..ops.metrics import Metrics

__all__ = ["Connector", "ReconnectPolicy"]

log = logging.getLogger("connector.supervisor")

_AUTH_HINT: Final = (
    "check that the key is a secret key (sk_test_... or sk_live_...), that it has not been "
    "revoked, and that an sk_live_ key's source has opted into the production reverse channel"
)


class ReconnectPolicy:
    """How long to wait before the next attempt, by what went wrong.

    Transient failures follow the schedule (0, 1, 2, 5, 10, 30 s by default,
    ±jitter), which restarts only after a connection stayed ready for
    ``stable_after`` seconds, so a server that accepts and drops at once
    cannot cause a tight loop. Rate limits honour ``Retry-After``; credential
    and protocol problems wait the slowest step; a superseded connector
    waits ``superseded_backoff`` (0: until stopped).
    """

    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self.failures = 0

    def _jitter(self, delay: float) -> float:
        spread = delay * self._config.reconnect_jitter
        return max(0.0, delay + self._rng.uniform(-spread, spread))

    def delay_after(self, failure: BaseException) -> float | None:
        """Seconds to wait, or ``None`` for "until stopped"."""
        config = self._config
        if isinstance(failure, ConnectFailure) and failure.ready_for >= config.stable_after:
            self.failures = 0
        if isinstance(failure, Superseded):
            self.failures = 0
            return None if config.superseded_backoff == 0 else config.superseded_backoff
        if isinstance(failure, RateLimited) and failure.retry_after is not None:
            return self._jitter(min(max(failure.retry_after, 1.0), config.max_retry_after))
        if isinstance(failure, AuthenticationFailed | RateLimited | ProtocolMismatch):
            return self._jitter(config.slowest_delay)
        schedule = config.reconnect_schedule
        delay = schedule[min(self.failures, len(schedule) - 1)]
        self.failures += 1
        return self._jitter(delay)


class Connector:
    """Serves a :class:`DataSource` to the engine until stopped.

    Construct it with a :class:`Config` and your source, then ``await
    run()``. :meth:`stop` drains in-flight requests and closes with 1000
    ``connector_aborted``, all within ``shutdown_grace`` seconds of the
    call, whatever the socket does (what is still running then is
    cancelled, and a close the engine does not complete drops the socket);
    ``stop(force=True)`` (or cancelling ``run``) abandons them.

    Requests are traced (OpenTelemetry) with ``tracer_provider`` when given,
    else as the ``OTEL_*`` variables say: see :mod:`connector.ops.tracing`.
    """

    def __init__(
        self,
        config: Config,
        source: DataSource,
        *,
        observer: Observer | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.status = ConnectorStatus()
        self.metrics: Metrics | None = None
        if config.health_addr is not None:
            # Imported here: prometheus-client costs memory a connector
            # without a health endpoint should not pay.
            from ..ops.metrics import Metrics

            self.metrics = Metrics(self.status)
            if hasattr(source, "full_table_shapes"):  # the SQL adapter's plans (its .plans)
                self.metrics.count_full_table_shapes(lambda: len(source.full_table_shapes))
        self.health: HealthServer | None = None
        self._notifier: SystemdNotifier | None = None
        verifier = Verifier(config.api_key, tolerance=config.signature_tolerance)
        self.tracing: RequestTracing | None = request_tracing(
            tracer_provider, redact=verifier.redact, status=self.status
        )
        self.inspector: Inspector | None = None
        if config.inspect_addr is not None:
            from ..ops.inspector import Inspector

            self.inspector = Inspector(
                self.status,
                config.inspect_addr,
                token=config.inspect_token,
                max_requests=config.inspect_requests,
                max_bytes=config.inspect_memory,
                max_body=config.max_message_size,
                replay=self._replay if config.inspect_replay else None,
                redact=lambda text: redact_logged(verifier.redact(text)),
                port_fallback=config.inspect_port_fallback,
            )
        # Everything that watches requests: metrics, tracing, the inspector,
        # and an embedding program's own observer.
        self.observers: list[Observer] = [
            o for o in (self.metrics, self.tracing, self.inspector, observer) if o is not None
        ]
        self.observer: Observer | None = observing(self.observers)
        self.dispatcher = Dispatcher(
            source,
            verifier,
            request_timeout=config.request_timeout,
            replay_memory=config.replay_memory,
            max_workers=config.max_in_flight,
            spare_threads=config.spare_threads,
            on_threads_change=self.status.set_stuck_handlers,
            detailed_errors=config.detailed_errors,
            call_span=None if self.tracing is None else self.tracing.handler_span,
        )
        self._probe: SourceProbe | None = None
        self.policy = ReconnectPolicy(config)
        self._stopping: asyncio.Event | None = None
        self._leave = asyncio.Event()  # ends the current serving phase (stop, or lock lost)
        self._lock = _lock(config.ha_lock, config.ha_lease_duration) if config.ha_lock else None
        self._gate: LeaderLock | None = None  # the lock, while this replica leads
        self._in_flight: InFlight | None = None
        self._last_failure_code: str | None = None
        self._stop_deadline: float | None = None  # time.monotonic() when stop() must be done

    def __repr__(self) -> str:
        return f"Connector(url={self.config.url!r}, state={self.status.state.value})"

    async def _replay(self, request_id: str, body: str) -> tuple[dict[str, str], Answer]:
        """The inspector's replay: ``body`` through the dispatcher as a new delivery,
        signed here with the key (which never leaves the process), answered to
        the inspector alone. The engine and the metrics never see it."""
        if self.stopping or self.status.state is State.STOPPED:
            from ..ops.inspector import ReplayRefused

            raise ReplayRefused("the connector is stopping")
        message_id = f"msg_replay_{uuid.uuid4().hex}"
        headers = {
            "content-type": "application/json",
            **sign_request(self.config.api_key, message_id, body),
        }
        answer = await self.dispatcher.dispatch("POST", headers, body, request_id=request_id)
        return headers, answer

    def _stop_event(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    def stop(self, *, force: bool = False) -> None:
        """Ask ``run`` to finish: drain (or, with ``force``, abandon) and close."""
        if not self.stopping:
            self._stop_deadline = time.monotonic() + self.config.shutdown_grace
            if self._notifier is not None:
                self._notifier.stopping()
        self._stop_event().set()
        if force and self._in_flight is not None:
            self._in_flight.abandon()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until registered and ready; raise :class:`ConnectorError` if
        :meth:`run` ends first (a configuration error, say), ``TimeoutError``
        after ``timeout`` seconds."""
        # Not wait_for: on Python 3.11 it drops a cancellation of the caller
        # that lands as the connector becomes ready.
        async with asyncio.timeout(timeout):
            await self.status.wait_ready()
        if not self.status.is_ready:
            why = self.status.last_error_message or self.status.last_error or "stopped"
            raise ConnectorError(f"the connector stopped before it was ready: {why}")

    async def run(self) -> None:
        """Connect and serve until stopped. Raises :class:`AuthenticationFailed`
        only when ``exit_on_auth_failure`` is set."""
        stopping = self._stop_event()
        in_flight = self._in_flight = InFlight(self.config.max_in_flight, self.status)
        try:
            await self._start_services()
            if self._lock is None:
                log.info("connector starting: dialing %s", self.config.url)
                await self._serve_until(stopping, in_flight)
            else:
                await self._serve_while_leader(self._lock, stopping, in_flight)
        except ConfigError as error:
            self.status.last_error, self.status.last_error_message = "configuration", str(error)
            raise
        finally:
            await self._finish(in_flight)

    async def _serve_until(self, leave: asyncio.Event, in_flight: InFlight) -> None:
        """Dial, serve and reconnect until ``leave`` is set."""
        self._leave = leave
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._should_retry),
            wait=self._wait,
            stop=lambda _: leave.is_set(),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._connect_once(in_flight, leave)
        except ConnectFailure:
            if not leave.is_set():
                raise

    async def _serve_while_leader(
        self, lock: LeaderLock, stopping: asyncio.Event, in_flight: InFlight
    ) -> None:
        """Wait for the lock, serve while it is ours, fence when it is not."""
        log.info("connector starting as a replica: dialing only while holding %s", lock.description)
        try:
            await self._lead_while_held(lock, stopping, in_flight)
        finally:
            await lock.release()  # a standby's own session, if the backend keeps one

    async def _lead_while_held(
        self, lock: LeaderLock, stopping: asyncio.Event, in_flight: InFlight
    ) -> None:
        lock_error: str | None = None
        while not stopping.is_set():
            self.status.set(State.STANDBY)
            try:
                acquired = await lock.try_acquire()
                lock_error = None
            except OSError as error:
                if str(error) != lock_error:  # once per distinct failure, not every retry
                    log.warning("cannot reach the HA lock %s: %s", lock.description, error)
                lock_error, acquired = str(error), False
            if not acquired:
                await _wait_set(stopping, self.config.ha_retry_interval)
                continue
            log.info(
                "took the HA lock %s: this replica is the leader; dialing %s in %g s",
                lock.description,
                self.config.url,
                lock.settle_delay,
            )
            leave = asyncio.Event()
            lost = asyncio.ensure_future(lock.wait_lost())  # confirming from now on
            stopped = asyncio.ensure_future(stopping.wait())
            for watcher in (lost, stopped):
                watcher.add_done_callback(functools.partial(_set_event, leave))
            try:
                # Any previous leader's serving window closes within the settle
                # delay (see connector.ha); every frame is then gated on the lock.
                if not await _wait_set(leave, lock.settle_delay):
                    self._gate = lock
                    await self._serve_until(leave, in_flight)
            finally:
                self._gate = None
                was_lost = not stopping.is_set() and (lost.done() or not lock.held)
                lost.cancel()
                stopped.cancel()
                try:
                    await self._drain(in_flight, self._deadline())
                finally:
                    await lock.release()
                self.policy.failures = 0
            if was_lost:
                log.error(
                    "lost the HA lock %s: fenced (stopped reading requests, drained, closed); "
                    "back to standby",
                    lock.description,
                )
                # The others get their turn before this replica tries again.
                await _wait_set(stopping, self.config.ha_retry_interval)

    # ----------------------------------------------------------- internals

    def _should_retry(self, error: BaseException) -> bool:
        if self._leave.is_set():
            return False
        if isinstance(error, AuthenticationFailed) and self.config.exit_on_auth_failure:
            self._log_failure(error, None)
            return False
        return isinstance(error, ConnectFailure)

    def _wait(self, state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        delay = self.policy.delay_after(failure) if failure else 0.0
        # tenacity wants a number; "until stopped" is a very long sleep that
        # stop() interrupts.
        return float("inf") if delay is None else delay

    async def _sleep(self, seconds: float) -> None:
        leave = self._leave
        if seconds > 0 and not leave.is_set():
            await _wait_set(leave, None if seconds == float("inf") else seconds)

    def _before_sleep(self, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        delay = state.upcoming_sleep
        if isinstance(failure, ConnectFailure):
            self._log_failure(failure, delay)
            now = State.STOOD_DOWN if isinstance(failure, Superseded) else State.BACKOFF
            next_attempt_at = (
                None if delay is None or delay == float("inf") else time.time() + delay
            )
            self.status.set(
                now, error=failure.code, message=str(failure), next_attempt_at=next_attempt_at
            )

    def _log_failure(self, failure: ConnectFailure, delay: float | None) -> None:
        when = (
            "not reconnecting (exit requested)"
            if delay is None
            else "standing down until stopped"
            if delay == float("inf")
            else f"next attempt in {round(delay, 2):g} s"
        )
        repeated = failure.code == self._last_failure_code
        self._last_failure_code = failure.code
        # The fields a log pipeline groups connection failures by.
        said = logging.LoggerAdapter(
            log, {"error_code": failure.code, "attempt": self.status.attempt}
        )
        if isinstance(failure, Superseded):
            said.error(
                "superseded: a newer connector took this source; %s "
                "(--superseded-backoff) so the two do not steal it back and forth",
                when,
            )
        elif isinstance(failure, AuthenticationFailed):
            if repeated:
                said.warning("still rejected: %s; %s", failure, when)
            else:
                said.error("%s: the API key was refused; %s. %s", failure, _AUTH_HINT, when)
        elif isinstance(failure, RateLimited):
            said.warning("%s: too many connections or attempts; %s", failure, when)
        elif isinstance(failure, ProtocolMismatch):
            said.error("%s; %s", failure, when)
        else:
            level = (
                logging.INFO if failure.ready_for >= self.config.stable_after else logging.WARNING
            )
            said.log(level, "%s; %s", failure, when)

    async def _connect_once(self, in_flight: InFlight, stopping: asyncio.Event) -> None:
        gate = self._gate
        if gate is not None and not gate.may_serve() and not await gate.confirm():
            return  # the HA lock is lost: step down rather than dial
        self.status.set(State.CONNECTING)
        connection = Connection(
            self.config,
            self.dispatcher,
            self.status,
            in_flight,
            self.observer,
            gate=gate,
        )
        serving = asyncio.ensure_future(connection.run())
        stop_requested = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({serving, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await _close_when_cancelled(connection, serving)
            raise
        finally:
            stop_requested.cancel()
        if serving.done():
            if connection.ready_for == 0.0 and self.observer is not None:
                self.observer.attempt_ended(_outcome(serving.exception()))
            self._raise_outcome(serving)
            return
        try:
            await self._step_off(connection, serving, in_flight)
        except asyncio.CancelledError:
            # run() cancelled while it drained after stop() (or a fence):
            # the socket still closes, or the engine would go on sending
            # requests to a connector that no longer reads them.
            await _close_when_cancelled(connection, serving)
            raise

    async def _step_off(
        self, connection: Connection, serving: asyncio.Future[None], in_flight: InFlight
    ) -> None:
        """Stop reading, drain what runs, and close: on stop() or when fenced."""
        await _reap(serving)
        deadline = self._deadline()
        if not self.stopping:
            # Fenced (the HA lock is lost): read nothing more, not even to
            # refuse it; the engine retries on the new leader.
            await self._drain(in_flight, deadline)
            await connection.close(1000, "connector_aborted", timeout=_left(deadline))
            return
        refusing = asyncio.ensure_future(connection.refuse_while_draining())
        try:
            await self._drain(in_flight, deadline)
        finally:
            await _reap(refusing)
        await connection.close(1000, "connector_aborted", timeout=_left(deadline))

    @staticmethod
    def _raise_outcome(serving: asyncio.Future[None]) -> None:
        error = serving.exception()
        if error is None or isinstance(error, ConnectFailure):
            serving.result()
            return
        log.error("connection failed unexpectedly", exc_info=error)
        raise ConnectionLost(f"unexpected error: {type(error).__name__}: {error}") from error

    def _deadline(self) -> float:
        """When the drain and close under way must be over: within the grace
        period of stop(), or of now when fenced."""
        if self._stop_deadline is not None:
            return self._stop_deadline
        return time.monotonic() + self.config.shutdown_grace

    async def _drain(self, in_flight: InFlight, deadline: float | None = None) -> None:
        """Let running requests finish until shortly before ``deadline``, then
        cancel them; the rest of the time is the close's."""
        if not in_flight.tasks:
            return
        self.status.set(State.DRAINING)
        if _cancelled():
            # run() itself is cancelled: abandon, as stop(force=True) does,
            # rather than keep its caller waiting out the grace period.
            in_flight.abandon()
            deadline = time.monotonic() + _CLOSE_WHEN_CANCELLED
        left = _left(self._deadline() if deadline is None else deadline)
        reserve = min(_CLOSE_RESERVE, left / 4)
        wait = left - reserve
        log.info(
            "draining %d in-flight request(s) for up to %g s", len(in_flight.tasks), round(wait, 1)
        )
        try:
            abandoned = await in_flight.drain(wait, cancel_wait=reserve / 2)
        except asyncio.CancelledError:
            in_flight.abandon()
            raise
        if abandoned:
            log.warning(
                "abandoned %d request(s) still running after %g s", abandoned, round(wait, 1)
            )

    async def _start_services(self) -> None:
        if self.inspector is not None:
            try:
                await self.inspector.start()
            except OSError as error:
                raise ConfigError(
                    f"cannot serve the inspector on {self.config.inspect_addr}: {error.strerror}"
                ) from None
        if self.config.health_addr is not None:
            from ..ops.health import HealthServer

            self.health = HealthServer(self.status, self.metrics, self.config.health_addr)
            try:
                await self.health.start()
            except OSError as error:
                raise ConfigError(
                    f"cannot serve health endpoints on {self.config.health_addr}: {error.strerror}"
                ) from None
        self._notifier = SystemdNotifier.from_environment()
        if self._notifier is not None:
            self._notifier.attach(self.status)
        if overridden(self.source, "probe"):
            self._probe = SourceProbe(
                self.source.probe,
                self.status,
                self.config.probe_interval,
                redact=self.dispatcher.verifier.redact,
                gauges=getattr(self.source, "probe_gauges", None),
            )
            self._probe.start()

    async def _finish(self, in_flight: InFlight) -> None:
        # Every step runs even when run() is cancelled again meanwhile (a
        # caller's "cancel, then wait N s"): a step skipped would leave a port
        # bound, or a probe calling the database, after run() has ended.
        cancelled: asyncio.CancelledError | None = None
        try:
            await self._drain(in_flight, self._deadline())
        except asyncio.CancelledError as error:
            cancelled = error
        self.dispatcher.close()
        self.status.set(State.STOPPED)
        for service in (self._probe, self.health, self.inspector):
            if service is None:
                continue
            try:
                await service.close()
            except asyncio.CancelledError as error:
                cancelled = error
        if self._notifier is not None:
            self._notifier.close()
        log.info("connector stopped")
        if cancelled is not None:
            raise cancelled


# Of the grace period, what is kept for cancelling leftover requests and the close.
_CLOSE_RESERVE: Final = 2.0
# A cancelled run() still tries a polite close, briefly.
_CLOSE_WHEN_CANCELLED: Final = 1.0


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _lock(url: str, lease_duration: float) -> LeaderLock:
    try:
        return lock_from_url(url, lease_duration=lease_duration)
    except ValueError as error:
        # The URL may hold a password, however malformed it is.
        message = str(error)
        for secret in url_secrets(url):
            message = message.replace(secret, REDACTED)
        raise ConfigError(message) from None


async def _wait_set(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait up to ``timeout`` s for ``event``; whether it is set. (Not
    wait_for: on Python 3.11 it drops a cancellation of the caller that
    lands as the event is set, and a stopped connector would go on.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


async def _close_when_cancelled(connection: Connection, serving: asyncio.Future[None]) -> None:
    """A brief polite close for a cancelled run(), shielded: a further
    cancellation ends the wait, not the close."""
    serving.cancel()
    closing = asyncio.ensure_future(connection.close(timeout=_CLOSE_WHEN_CANCELLED))
    await asyncio.shield(closing)


async def _reap(future: asyncio.Future[None]) -> None:
    """Cancel ``future`` and wait for it to end, whatever it raises, while a
    cancellation of the caller itself still propagates."""
    future.cancel()
    await asyncio.wait({future})
    if not future.cancelled():
        future.exception()  # abandoned on purpose: nothing to report


def _cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _set_event(event: asyncio.Event, _: object) -> None:
    event.set()


def _outcome(error: BaseException | None) -> str:
    if isinstance(error, AuthenticationFailed):
        return "auth_rejected"
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, Superseded):
        return "superseded"
    if isinstance(error, ProtocolMismatch):
        return "protocol_mismatch"
    if isinstance(error, HandshakeRejected):
        return "rejected"
    return "failed"
