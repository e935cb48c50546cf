"""Which handler method answers a request, and what does the engine get back?

:class:`Dispatcher` turns one signed request into one :class:`Answer` and
never raises: it verifies the signature, coalesces replays of the same
``webhook-id``, parses the body, resolves the model names it holds to the
source's own (:mod:`.models`), runs the source's ``authorize``/``scopes``
hooks, routes to ``load``, ``list``, ``commit`` or ``events``, and maps every
failure to the status and error body of ``docs/protocol.md`` §5. It owns no
socket; the connection feeds it requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Final

import pydantic_core
from pydantic import ValidationError

from ..errors import SignatureError, SourceError
from ..wire.bodies import (
    OPERATIONS,
    CommitRequest,
    EventsRequest,
    ListRequest,
    LoadRequest,
    SourceRequest,
    describe_request_error,
    parse_source_request,
    parse_source_request_fast,
)
from ..wire.signing import VerifiedRequest, Verifier, header_value
from ..wire.strict_json import loads
from .answer import Answer, dumps, error_answer, success_body, timeout_answer
from .datasource import DataSource, RequestContext, overridden
from .deadlines import Deadlines, cancelled_itself
from .failures import handler_failed, timed_out_logged
from .models import DeclaredModels, ModelNames, resolve_models
from .replay import FirstCopyCancelled, ReplayCache
from .workers import HandlerThreads

__all__ = ["Dispatcher"]

log = logging.getLogger("connector.dispatcher")

_MAX_ERROR_MESSAGE: Final = 500
_SKEW_WARNING_INTERVAL: Final = 60.0


class Dispatcher:
    """Answers signed requests from one :class:`DataSource`; safe to call concurrently.

    ``request_timeout`` bounds each request (504 ``source_connector_timeout``
    past it): an ``async`` handler is cancelled; a plain ``def`` handler's
    thread cannot be interrupted, so it finishes in the background, its
    result is dropped, and it counts as stuck until then (see
    :mod:`.workers`: ``max_workers`` threads for calls in flight, and
    ``spare_threads`` more to replace stuck ones). Commit answers are kept
    for replays within ``replay_memory`` bytes (see :mod:`.replay`).

    A handler's exception answers 500 with a generic message and a
    ``reference`` that the local ERROR log line (with the traceback) carries
    too; ``detailed_errors`` sends the exception's text instead, for
    development. ``call_span``, when given, wraps each call into the source
    (tracing: see ``connector.ops.tracing``).
    """

    def __init__(
        self,
        source: DataSource,
        verifier: Verifier,
        *,
        request_timeout: float = 25.0,
        replay_window: float | None = None,
        replay_memory: int = 16 * 1024 * 1024,
        max_workers: int = 64,
        spare_threads: int | None = None,
        on_threads_change: Callable[[int, bool], None] | None = None,
        detailed_errors: bool = False,
        call_span: Callable[[Callable[..., Any]], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.source = source
        self.verifier = verifier
        self._deadlines = Deadlines(request_timeout)
        self._replays = ReplayCache(
            verifier.tolerance if replay_window is None else replay_window, replay_memory
        )
        self.threads = HandlerThreads(
            max_workers,
            max_workers if spare_threads is None else spare_threads,
            on_change=on_threads_change,
        )
        self._implemented = {op: overridden(source, op) for op in OPERATIONS}
        self._has_authorize = overridden(source, "authorize")
        self._has_scopes = overridden(source, "scopes")
        # Model names: declared once (a class attribute), or asked of the source
        # per request when it knows them only at run time; else used as sent.
        self._asks_for_models = overridden(source, "served_models")
        self._model_names: ModelNames | None = None
        self._models_declared: object = None
        if not self._asks_for_models and source.model_names is not None:
            self._model_names = ModelNames.of(
                source.model_names, origin=f"{type(source).__name__}.model_names"
            )
        self._resolves_models = self._asks_for_models or self._model_names is not None
        self._is_async: dict[str, bool] = {}
        self._last_skew_warning = -_SKEW_WARNING_INTERVAL
        self._detailed_errors = detailed_errors
        # An untraced async handler method is awaited without _call in between.
        self._awaited_directly: dict[str, Callable[..., Awaitable[Any]] | None] = {
            op: method
            if call_span is None and inspect.iscoroutinefunction(method := getattr(source, op))
            else None
            for op in OPERATIONS
        }
        if call_span is not None:  # chosen once, so an untraced call pays nothing
            self._call = _within(call_span, self._call)  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return f"Dispatcher(source={type(self.source).__name__}, timeout={self.request_timeout})"

    @property
    def request_timeout(self) -> float:
        return self._deadlines.timeout

    @property
    def replay_entries(self) -> int:
        """Requests in flight plus commit answers kept for replays."""
        return len(self._replays)

    @property
    def replay_bytes(self) -> int:
        """What the kept commit answers cost, as counted against ``replay_memory``."""
        return self._replays.kept_bytes

    def close(self) -> None:
        """Release the worker threads (waiting for none of them) and the kept answers."""
        self.threads.close()
        self._replays.close()

    async def dispatch(
        self,
        method: str,
        headers: Mapping[str, str],
        body: str,
        *,
        request_id: str | None = None,
    ) -> Answer:
        """Answer one signed request as an HTTP endpoint would. Never raises."""
        if method != "POST":
            return error_answer(
                405, "method_not_allowed", f"method {method} is not allowed; use POST"
            )
        if not self.verifier.has_keys:
            return error_answer(
                401, "source_api_key_missing", "the connector has no API key to verify with"
            )
        try:
            verified = self.verifier.verify(headers, body)
        except SignatureError as error:
            if error.code == "source_timestamp_expired":
                self._warn_clock_skew(headers)
            return error_answer(401, error.code, error.message)

        key = verified.message_id
        known = self._replays.lookup(key)
        if isinstance(known, Answer):
            return known  # built for this replay, already marked replayed
        if known is not None:
            try:
                first = await asyncio.wait_for(asyncio.shield(known), self.request_timeout)
            except TimeoutError:
                timed_out = timeout_answer(None, None, self.request_timeout)
                return timed_out_logged(timed_out, request_id, key, self.request_timeout)
            except FirstCopyCancelled:
                return await self.dispatch(method, headers, body, request_id=request_id)
            return dataclasses.replace(first, replayed=True)

        self._replays.start(key)
        answer: Answer | None = None
        try:
            answer = await self._serve(verified, headers, body, request_id)
            return answer
        finally:
            self._replays.finish(key, answer)

    async def _serve(
        self,
        verified: VerifiedRequest,
        headers: Mapping[str, str],
        body: str,
        request_id: str | None,
    ) -> Answer:
        request = parse_source_request_fast(body)
        if request is None or (isinstance(request, CommitRequest) and not request.correlation_id):
            parsed = _parse_with_diagnosis(body)
            if isinstance(parsed, Answer):
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
            if self._resolves_models:
                names = await self._asked_names() if self._asks_for_models else self._model_names
                resolved = request if names is None else resolve_models(names, request)
                if resolved is not request:
                    request, model = resolved, getattr(resolved, "model", None)
                    ctx = ctx._replace(request=request)
            answer = await self._route(ctx, request)
            if deadline.expired:
                # The handler swallowed its cancellation and answered late: the
                # request is past its deadline all the same.
                log.warning(
                    "the handler of request %s ignored its cancellation at the deadline",
                    request_id or "-",
                )
                raise asyncio.CancelledError
            return answer
        except asyncio.CancelledError as cancelled:
            task = asyncio.current_task()
            if deadline.expired:
                if task is not None and task.cancelling():
                    task.uncancel()
                seconds = time.monotonic() - started
                timed_out = timeout_answer(request.type, model, seconds)
                return timed_out_logged(timed_out, request_id, ctx.message_id, seconds)
            if task is not None and task.cancelling():
                if not cancelled_itself(task):
                    raise  # cancelled by whoever runs it (a forced stop): let it end
                task.uncancel()
            # The handler cancelled its own task, or raised CancelledError of
            # its own (awaiting something another party cancelled): a failure
            # like any other (see .deadlines).
            return self._failed(cancelled, ctx, model, started)
        except SourceError as error:
            chosen = self._chosen(error, request.type, model)
            if chosen is None:
                return self._failed(error, ctx, model, started)
            if error.status != 504:
                return chosen
            return timed_out_logged(chosen, request_id, ctx.message_id, time.monotonic() - started)
        except BaseException as error:
            # Nothing a handler raises may stop the connector or lose the answer.
            return self._failed(error, ctx, model, started)
        finally:
            self._deadlines.leave(deadline)

    def _failed(
        self, error: BaseException, ctx: RequestContext, model: str | None, started: float
    ) -> Answer:
        detail = self._describe_failure(error) if self._detailed_errors else None
        return handler_failed(error, ctx, model, time.monotonic() - started, detail)

    @staticmethod
    def _chosen(error: SourceError, operation: str, model: str | None) -> Answer | None:
        """The answer a handler chose by raising ``error``, or None if it cannot be sent."""
        if not isinstance(error.status, int) or not 400 <= error.status <= 599:
            log.error("a SourceError's status must be 400 to 599, not %r", error.status)
            return None
        try:
            body = dumps(error.body())
        except (pydantic_core.PydanticSerializationError, TypeError, ValueError):
            log.error("a SourceError's fields are not JSON-serializable: %s", error.code)
            return None
        return Answer(error.status, body, operation=operation, model=model, error=error.code)

    async def _asked_names(self) -> ModelNames | None:
        declared = self.source.served_models()
        if inspect.isawaitable(declared):
            declared = await declared
        return self._names_of(declared)

    def _names_of(self, declared: DeclaredModels | ModelNames | None) -> ModelNames | None:
        """The resolution for what ``served_models()`` returned, built once per object."""
        if declared is None or isinstance(declared, ModelNames):
            return declared
        if declared is not self._models_declared or self._model_names is None:
            self._model_names = ModelNames(
                declared, origin=f"{type(self.source).__name__}.served_models()"
            )
            self._models_declared = declared
        return self._model_names

    async def _route(self, ctx: RequestContext, request: SourceRequest) -> Answer:
        operation = request.type
        model = getattr(request, "model", None)
        if self._has_authorize:
            ctx = ctx._replace(auth=await self._call(self.source.authorize, ctx))
        if self._has_scopes:
            granted = await self._call(self.source.scopes, ctx)
            if granted is not None:
                granted_list = sorted(set(granted))
                if operation not in granted_list:
                    return error_answer(
                        403,
                        "source_forbidden",
                        f"this request may not use {operation}",
                        operation=operation,
                        model=model,
                        fields={"required": operation, "granted": granted_list},
                    )
        if not self._implemented[operation]:
            return error_answer(
                404,
                f"source_{operation}_not_configured",
                f"the data source does not implement {operation}",
                operation=operation,
                model=model,
                fields=None if model is None else {"model": model},
            )

        source = self.source
        method: Callable[..., Any]
        args: tuple[Any, ...]
        if isinstance(request, LoadRequest):
            method, args = source.load, (request.model, request.id, ctx)
        elif isinstance(request, ListRequest):
            method, args = source.list, (request.model, request.query, ctx)
        elif isinstance(request, CommitRequest):
            method, args = source.commit, (request, ctx)
        else:
            assert isinstance(request, EventsRequest)
            method, args = source.events, (request.cursor, request.limit, ctx)
        awaited = self._awaited_directly[operation]
        if awaited is not None:
            result = await awaited(*args)
        else:
            result = await self._call(method, *args)
        try:
            text = dumps(success_body(operation, result))
        except pydantic_core.PydanticSerializationError as error:
            raise TypeError(
                f"{operation} returned a value that is not JSON-serializable: {error}"
            ) from None
        return Answer(200, text, operation=operation, model=model)

    async def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        is_async = self._is_async.get(method.__name__)
        if is_async is None:
            is_async = self._is_async[method.__name__] = inspect.iscoroutinefunction(method)
        if is_async:
            return await method(*args)
        result = await self.threads.call(method, *args)
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


def _parse_with_diagnosis(body: str) -> SourceRequest | Answer:
    """The slow path: find out exactly what is wrong with the body."""
    try:
        value = loads(body)
    except (ValueError, RecursionError):
        return error_answer(400, "invalid_json", "the request body is not valid JSON")
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in OPERATIONS:
        return error_answer(
            400,
            "unknown_source_request",
            f"the body's type is not one of {', '.join(OPERATIONS)}",
        )
    if kind == "commit" and not (value.get("correlationId") or value.get("clientTxId")):
        return error_answer(
            400,
            "source_commit_requires_correlation_id",
            "commit requires a correlationId for idempotency",
            operation="commit",
        )
    try:
        return parse_source_request(value)
    except ValidationError as error:
        code = "source_commit_invalid" if kind == "commit" else "source_request_invalid"
        return error_answer(400, code, describe_request_error(error, value), operation=kind)


def _timestamp_offset(headers: Mapping[str, str]) -> float | None:
    try:
        return float(header_value(headers, "webhook-timestamp")) - time.time()
    except (ValueError, OverflowError):
        return None


def _within(
    span: Callable[[Callable[..., Any]], AbstractContextManager[object]],
    call: Callable[..., Any],
) -> Callable[..., Any]:
    """``call``, each time inside ``span(method)``."""

    async def spanned(method: Callable[..., Any], *args: Any) -> Any:
        with span(method):
            return await call(method, *args)

    return spanned
