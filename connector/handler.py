"""Which handler method serves a request, and what does the engine get back?

:class:`DataSource` is the class users subclass. :class:`Dispatcher` turns
one signed request into one response and never raises: it verifies the
signature, coalesces replays of the same ``webhook-id``, parses the body,
runs the user's ``authorize``/``scopes`` hooks, routes to ``load``, ``list``,
``commit`` or ``events``, and maps every failure to the status and error
body of ``PROTOCOL.md`` §5. It owns no socket; the client feeds it frames.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import inspect
import logging
import time
import types
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import pydantic_core
from pydantic import ValidationError

from .protocol import (
    RequestFrame,
    ResponseFrame,
    describe_validation_error,
    strict_json_loads,
)
from .signing import SignatureError, VerifiedRequest, Verifier, header_value
from .source import (
    REQUEST_TYPES,
    CommitRequest,
    CommitResult,
    EventsPage,
    EventsRequest,
    ListPage,
    ListQuery,
    ListRequest,
    LoadRequest,
    Scope,
    SourceRequest,
    parse_source_request,
    parse_source_request_json,
)

__all__ = [
    "DataSource",
    "Dispatcher",
    "HttpResponse",
    "OperationName",
    "RequestContext",
    "Row",
    "SourceError",
]

log = logging.getLogger("connector.handler")

Row: TypeAlias = Mapping[str, Any]
OperationName = Literal["load", "list", "commit", "events"]
OPERATIONS: Final[tuple[OperationName, ...]] = ("load", "list", "commit", "events")

MaybeAwaitable: TypeAlias = Any  # a value, or an awaitable of it (sync or async handlers)

_MAX_ERROR_MESSAGE: Final = 500
_SKEW_WARNING_INTERVAL: Final = 60.0


class SourceError(Exception):
    """Raise from a handler to answer with a specific status and error code.

    ``SourceError("idempotency_conflict", "key reused", status=409)`` answers
    409 ``{"error": "idempotency_conflict", "message": "key reused"}``; extra
    keyword arguments become extra fields of the error body.
    """

    def __init__(self, code: str, message: str = "", *, status: int = 400, **details: Any):
        super().__init__(message or code)
        self.code = code
        self.message = message
        self.status = status
        self.details = details

    def body(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"error": self.code}
        if self.message:
            payload["message"] = self.message
        payload.update(self.details)
        return payload


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a handler knows about the request it serves.

    ``message_id`` and ``signed_at`` are vouched for by the signature;
    ``scope`` is the engine's advisory context; ``auth`` is whatever
    :meth:`DataSource.authorize` returned.
    """

    operation: OperationName
    message_id: str
    signed_at: int
    headers: Mapping[str, str]
    request: SourceRequest
    scope: Scope | None = None
    auth: Any = None
    request_id: str | None = None


class DataSource:
    """Subclass and override any of ``load``, ``list``, ``commit``, ``events``.

    Each may be ``async def`` or plain ``def``; a plain one runs in a worker
    thread so it never blocks the connection. An operation that is not
    overridden answers 404 ``source_<operation>_not_configured``. Raise
    :class:`SourceError` to answer with a specific status; any other
    exception answers 500 ``source_connector_handler_error``.
    """

    def load(self, model: str, id: str, ctx: RequestContext) -> MaybeAwaitable:
        """Return the row with ``id`` (a mapping), or ``None`` if absent."""
        raise NotImplementedError

    def list(self, model: str, query: ListQuery, ctx: RequestContext) -> MaybeAwaitable:
        """Return a list of rows, or a :class:`ListPage` with a ``next_cursor``."""
        raise NotImplementedError

    def commit(self, commit: CommitRequest, ctx: RequestContext) -> MaybeAwaitable:
        """Apply every operation atomically; idempotent on ``correlation_id``.

        Return a :class:`CommitResult` (or a mapping with ``rows``/``deltas``).
        """
        raise NotImplementedError

    def events(self, cursor: str | None, limit: int | None, ctx: RequestContext) -> MaybeAwaitable:
        """Return an :class:`EventsPage` of changes after ``cursor``."""
        raise NotImplementedError

    def authorize(self, ctx: RequestContext) -> MaybeAwaitable:
        """Optional: attach business context (returned value becomes ``ctx.auth``).

        Raise :class:`SourceError` (e.g. ``status=403``) to refuse the request.
        """
        return None

    def scopes(self, ctx: RequestContext) -> MaybeAwaitable:
        """Optional: the operations this request may use (``None`` = all)."""
        return None


@dataclass(slots=True)
class HttpResponse:
    """One answer, plus what an operator wants to know about it."""

    status: int
    body: str
    operation: str | None = None
    model: str | None = None
    error: str | None = None
    replayed: bool = False

    def to_frame(self, request_id: str) -> ResponseFrame:
        return ResponseFrame(id=request_id, status=self.status, body=self.body)


def _dumps(value: Any) -> str:
    return pydantic_core.to_json(value).decode("utf-8")


def _error(
    status: int,
    code: str,
    message: str,
    *,
    operation: str | None = None,
    model: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> HttpResponse:
    body = {"error": code, "message": message, **(fields or {})}
    return HttpResponse(status, _dumps(body), operation=operation, model=model, error=code)


class _LeaderGone(Exception):
    """The first copy of a request was cancelled before it produced an answer."""


_Kept: TypeAlias = tuple[float, int, str, str | None, str | None, str | None]


class _ReplayCache:
    """Answers by ``webhook-id``: in flight, or finished within the window.

    Only answers below 500 are kept: a 5xx tells the engine to retry, and the
    retry must run the handler again.
    """

    def __init__(self, window: float, capacity: int) -> None:
        self._window = window
        self._capacity = capacity
        # A future only once a duplicate waits for it: most requests have none.
        self._running: dict[str, asyncio.Future[HttpResponse] | None] = {}
        # Finished answers as flat tuples (expires, status, body, operation,
        # model, error): at 10,000 entries every object per entry costs ~1 MiB.
        self._done: OrderedDict[str, _Kept] = OrderedDict()

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    def lookup(self, key: str) -> HttpResponse | asyncio.Future[HttpResponse] | None:
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
        return HttpResponse(status, body, operation, model, error, replayed=True)

    def start(self, key: str) -> None:
        self._running[key] = None

    def finish(self, key: str, response: HttpResponse | None) -> None:
        waiter = self._running.pop(key)
        if response is None:
            if waiter is not None:
                waiter.set_exception(_LeaderGone())
                waiter.exception()  # waiters see it; nobody else must
            return
        if waiter is not None:
            waiter.set_result(response)
        if response.status < 500 and self._capacity > 0:
            self._done[key] = (
                time.monotonic() + self._window,
                response.status,
                response.body,
                response.operation,
                response.model,
                response.error,
            )
            while len(self._done) > self._capacity:
                self._done.popitem(last=False)

    def _purge(self, now: float) -> None:
        while self._done:
            key, kept = next(iter(self._done.items()))
            if kept[0] > now:
                break
            del self._done[key]


class _Deadline:
    __slots__ = ("expired", "finished", "task", "when")

    def __init__(self, when: float, task: asyncio.Task[Any] | None) -> None:
        self.when = when
        self.task = task
        self.finished = False
        self.expired = False


# Set while a request runs eagerly on the reader's task (see start_eagerly):
# its deadlines are collected here and given the request's own task once it
# has one, so a timeout never cancels the reader.
_eager_deadlines: contextvars.ContextVar[list[_Deadline] | None] = contextvars.ContextVar(
    "ablo_eager_deadlines", default=None
)


class _Deadlines:
    """Cancels requests that outlive the timeout, with one timer for all of them.

    Every request gets the same timeout, so deadlines arrive in order: a FIFO
    and a single armed timer do what a timer per request did (asyncio.timeout
    cost about a tenth of the connector's CPU per request).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._queue: deque[_Deadline] = deque()
        self._live = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self) -> _Deadline:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop: forget the old one's timer
            self._loop, self._queue, self._live, self._timer = loop, deque(), 0, None
        eager = _eager_deadlines.get()
        if eager is None:
            entry = _Deadline(loop.time() + self.timeout, asyncio.current_task())
        else:
            entry = _Deadline(loop.time() + self.timeout, None)
            eager.append(entry)
        self._queue.append(entry)
        self._live += 1
        if self._timer is None:
            self._timer = loop.call_at(entry.when, self._expire)
        return entry

    def leave(self, entry: _Deadline) -> None:
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


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` now, on the caller's task, until it first has to wait.

    Most requests never wait (the handler answers from memory, the response
    is buffered): they finish here, without a task or a loop turn of their
    own. One that does wait continues in a new task, which is returned; its
    request deadlines move to that task. (Python 3.12's eager tasks, for 3.11.)
    """
    deadlines: list[_Deadline] = []
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
def _resume(coro: Coroutine[Any, Any, None], awaited: Any) -> Generator[Any, Any, None]:
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


def _overrides(source: DataSource, name: str) -> bool:
    return getattr(type(source), name, None) is not getattr(DataSource, name)


class Dispatcher:
    """Serves one signed request at a time; safe to call concurrently.

    ``request_timeout`` bounds each request (504 ``source_connector_timeout``
    past it). A sync handler that overruns cannot be interrupted: its thread
    finishes in the background and its result is discarded.
    """

    def __init__(
        self,
        source: DataSource,
        verifier: Verifier,
        *,
        request_timeout: float = 25.0,
        replay_window: float | None = None,
        replay_capacity: int = 10_000,
        executor: Executor | None = None,
        max_workers: int = 64,
    ) -> None:
        self.source = source
        self.verifier = verifier
        self._deadlines = _Deadlines(request_timeout)
        self._replays = _ReplayCache(
            verifier.tolerance if replay_window is None else replay_window, replay_capacity
        )
        self._executor = executor
        self._max_workers = max_workers
        self._implemented = {op: _overrides(source, op) for op in OPERATIONS}
        self._has_authorize = _overrides(source, "authorize")
        self._has_scopes = _overrides(source, "scopes")
        self._is_async: dict[str, bool] = {}
        self._last_skew_warning = -_SKEW_WARNING_INTERVAL

    def __repr__(self) -> str:
        return f"Dispatcher(source={type(self.source).__name__}, timeout={self.request_timeout})"

    @property
    def request_timeout(self) -> float:
        return self._deadlines.timeout

    @property
    def replay_entries(self) -> int:
        return len(self._replays)

    def close(self) -> None:
        """Release the worker threads (waiting for none of them)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def handle(self, frame: RequestFrame) -> ResponseFrame:
        """Answer one ``request`` frame with its ``response`` frame."""
        response = await self.dispatch(frame.method, frame.headers, frame.body, request_id=frame.id)
        return response.to_frame(frame.id)

    async def dispatch(
        self,
        method: str,
        headers: Mapping[str, str],
        body: str,
        *,
        request_id: str | None = None,
    ) -> HttpResponse:
        """Answer one signed request as an HTTP endpoint would. Never raises."""
        if method != "POST":
            return _error(405, "method_not_allowed", f"method {method} is not allowed; use POST")
        if not self.verifier.has_keys:
            return _error(
                401, "source_api_key_missing", "the connector has no API key to verify with"
            )
        try:
            verified = self.verifier.verify(headers, body)
        except SignatureError as error:
            if error.code == "source_timestamp_expired":
                self._warn_clock_skew(headers)
            return _error(401, error.code, error.message)

        key = verified.message_id
        known = self._replays.lookup(key)
        if isinstance(known, HttpResponse):
            return known  # built for this replay, already marked replayed
        if known is not None:
            try:
                return _replayed(
                    await asyncio.wait_for(asyncio.shield(known), self.request_timeout)
                )
            except TimeoutError:
                return _timeout(None, None, self.request_timeout)
            except _LeaderGone:
                return await self.dispatch(method, headers, body, request_id=request_id)

        self._replays.start(key)
        response: HttpResponse | None = None
        try:
            response = await self._serve(verified, headers, body, request_id)
            return response
        finally:
            self._replays.finish(key, response)

    async def _serve(
        self,
        verified: VerifiedRequest,
        headers: Mapping[str, str],
        body: str,
        request_id: str | None,
    ) -> HttpResponse:
        request = _parse_fast(body)
        if request is None:
            parsed = _parse_with_diagnosis(body)
            if isinstance(parsed, HttpResponse):
                return parsed
            request = parsed
        ctx = RequestContext(
            operation=request.type,
            message_id=verified.message_id,
            signed_at=verified.signed_at,
            headers=headers,
            request=request,
            scope=request.scope,
            request_id=request_id,
        )
        model = getattr(request, "model", None)
        started = time.monotonic()
        deadline = self._deadlines.enter()
        try:
            return await self._route(ctx, request)
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return _timeout(request.type, model, time.monotonic() - started)
        except SourceError as error:
            return HttpResponse(
                error.status,
                _dumps(error.body()),
                operation=request.type,
                model=model,
                error=error.code,
            )
        except Exception as error:
            log.error(
                "handler raised while serving %s %s (request %s)",
                request.type,
                model or "-",
                request_id or "-",
                exc_info=True,
            )
            return _error(
                500,
                "source_connector_handler_error",
                self._describe_failure(error),
                operation=request.type,
                model=model,
            )
        finally:
            self._deadlines.leave(deadline)

    async def _route(self, ctx: RequestContext, request: SourceRequest) -> HttpResponse:
        operation = request.type
        model = getattr(request, "model", None)
        if self._has_authorize:
            ctx = dataclasses.replace(ctx, auth=await self._call(self.source.authorize, ctx))
        if self._has_scopes:
            granted = await self._call(self.source.scopes, ctx)
            if granted is not None:
                granted_list = sorted(set(granted))
                if operation not in granted_list:
                    return _error(
                        403,
                        "source_forbidden",
                        f"this request may not use {operation}",
                        operation=operation,
                        model=model,
                        fields={"required": operation, "granted": granted_list},
                    )
        if not self._implemented[operation]:
            return _error(
                404,
                f"source_{operation}_not_configured",
                f"the data source does not implement {operation}",
                operation=operation,
                model=model,
                fields=None if model is None else {"model": model},
            )

        if isinstance(request, LoadRequest):
            row = await self._call(self.source.load, request.model, request.id, ctx)
            payload: Any = {"row": _row_or_none(row)}
        elif isinstance(request, ListRequest):
            result = await self._call(self.source.list, request.model, request.query, ctx)
            payload = _list_payload(result)
        elif isinstance(request, CommitRequest):
            result = await self._call(self.source.commit, request, ctx)
            payload = _commit_payload(result)
        else:
            assert isinstance(request, EventsRequest)
            result = await self._call(self.source.events, request.cursor, request.limit, ctx)
            payload = _events_payload(result)
        try:
            text = _dumps(payload)
        except pydantic_core.PydanticSerializationError as error:
            raise TypeError(
                f"{operation} returned a value that is not JSON-serializable: {error}"
            ) from None
        return HttpResponse(200, text, operation=operation, model=model)

    async def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        is_async = self._is_async.get(method.__name__)
        if is_async is None:
            is_async = self._is_async[method.__name__] = inspect.iscoroutinefunction(method)
        if is_async:
            return await method(*args)
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix="ablo-handler"
            )
        call = functools.partial(contextvars.copy_context().run, method, *args)
        result = await loop.run_in_executor(self._executor, call)
        if inspect.isawaitable(result):
            return await result
        return result

    def _describe_failure(self, error: BaseException) -> str:
        text = str(error) or type(error).__name__
        return self.verifier.redact(text)[:_MAX_ERROR_MESSAGE]

    def _warn_clock_skew(self, headers: Mapping[str, str]) -> None:
        now = time.monotonic()
        if now - self._last_skew_warning < _SKEW_WARNING_INTERVAL:
            return
        offset = _timestamp_offset(headers)
        if offset is None:
            return
        self._last_skew_warning = now
        log.warning(
            "requests are rejected as expired: the engine's timestamp is %+.0f s from this "
            "host's clock (tolerance %.0f s). Every request will fail until the host clock "
            "is fixed (check NTP / chrony / timedatectl).",
            offset,
            self.verifier.tolerance,
        )


def _parse_fast(body: str) -> SourceRequest | None:
    """The common case in one pass through pydantic's JSON parser, or None."""
    if "NaN" in body or "Infinity" in body:
        return None  # let the strict parser decide; JSON has no such literals
    try:
        request = parse_source_request_json(body)
    except ValidationError:
        return None
    if isinstance(request, CommitRequest) and not request.correlation_id:
        return None
    return request


def _parse_with_diagnosis(body: str) -> SourceRequest | HttpResponse:
    """Slow path: find out exactly what is wrong with the body."""
    try:
        value = strict_json_loads(body)
    except (ValueError, RecursionError):
        return _error(400, "invalid_json", "the request body is not valid JSON")
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in REQUEST_TYPES:
        return _error(
            400, "unknown_source_request", "the body's type is not load, list, commit or events"
        )
    if kind == "commit" and not (value.get("correlationId") or value.get("clientTxId")):
        return _error(
            400,
            "source_commit_requires_correlation_id",
            "commit requires a correlationId for idempotency",
            operation="commit",
        )
    try:
        return parse_source_request(value)
    except ValidationError as error:
        code = "source_commit_invalid" if kind == "commit" else "source_request_invalid"
        return _error(400, code, describe_validation_error(error, "body"), operation=kind)


def _timestamp_offset(headers: Mapping[str, str]) -> float | None:
    try:
        return float(header_value(headers, "webhook-timestamp")) - time.time()
    except ValueError:
        return None


def _replayed(response: HttpResponse) -> HttpResponse:
    return dataclasses.replace(response, replayed=True)


def _timeout(operation: str | None, model: str | None, elapsed: float) -> HttpResponse:
    return _error(
        504,
        "source_connector_timeout",
        f"the handler did not answer within {elapsed:.1f} s",
        operation=operation,
        model=model,
    )


def _row_or_none(row: Any) -> Any:
    if (
        row is None
        or isinstance(row, Mapping)
        or hasattr(row, "__dataclass_fields__")
        or hasattr(row, "model_dump")
    ):
        return row
    raise TypeError(f"load returned {type(row).__name__}; expected a mapping or None")


def _list_payload(result: Any) -> Any:
    if isinstance(result, ListPage):
        return result.to_wire()
    if isinstance(result, Sequence) and not isinstance(result, str | bytes):
        return {"rows": list(result)}
    if isinstance(result, Mapping) and "rows" in result:
        return result
    raise TypeError(f"list returned {type(result).__name__}; expected a list of rows or a ListPage")


def _commit_payload(result: Any) -> Any:
    if result is None:
        return {}
    if isinstance(result, CommitResult):
        return result.to_wire()
    if isinstance(result, Mapping):
        return result
    raise TypeError(
        f"commit returned {type(result).__name__}; expected a CommitResult or a mapping"
    )


def _events_payload(result: Any) -> Any:
    if isinstance(result, EventsPage):
        return result.to_wire()
    if isinstance(result, Mapping) and "events" in result:
        return result
    if isinstance(result, Sequence) and not isinstance(result, str | bytes):
        return EventsPage(events=list(result)).to_wire()
    raise TypeError(f"events returned {type(result).__name__}; expected an EventsPage")
