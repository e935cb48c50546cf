"""Where did a request's time go? OpenTelemetry spans (the ``otel`` extra).

``pip install 'ablo-connector[otel]'`` adds the OpenTelemetry SDK and the
OTLP/HTTP exporter. Tracing stays off, and costs nothing on the request
path, unless it is configured through the standard variables:
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, or any installed
exporter's name) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` turns
it off again. The exporter, sampler, batch processor and resource read
their own ``OTEL_*`` variables (``OTEL_SERVICE_NAME`` defaults to
``ablo-connector``). An embedding program that has set a global tracer
provider (or passes ``tracer_provider=`` to ``Connector``) gets its spans
there instead.

Each request is one SERVER span named after its operation (``load``,
``list``, ``commit``, ``events``; ``request`` when the body was never
read), child of the engine's W3C ``traceparent`` header when the request
carries one, with the request's fields as ``ablo.*`` attributes. Each call
into the source (``load``, ``authorize``, ...) is a child span named after
the method (``SQLSource.load``), current while it runs, so spans the
handler makes itself (or a database driver's instrumentation) nest below
it. Exception events are redacted like log lines.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import os
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final

from .._version import __version__
from ..errors import SourceError
from ..wire.frames import RequestFrame
from . import logs
from .status import AnsweredRequest, ConnectorStatus, Observer

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["RequestTracing", "enable", "request_tracing"]

log = logging.getLogger("connector.tracing")

_MAX_EXCEPTION_TEXT: Final = 4000
_EXIT_FLUSH_SECONDS: Final = 2.0
_OTLP_BY_PROTOCOL: Final = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}

# The span of the request the current task serves, and the token that made it current.
_current_span: contextvars.ContextVar[tuple[Span, contextvars.Token[Context]] | None] = (
    contextvars.ContextVar("ablo_request_span", default=None)
)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A request header by its lower-case name, whatever case the engine used."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


class RequestTracing(Observer):
    """Makes the spans of each request, with ``tracer_provider``'s tracer.

    One of the connector's observers: a request's span starts in
    :meth:`request_started` and is current in the request's task (and so in
    a worker thread the handler runs in) until the answer is handed to the
    socket.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider,
        *,
        redact: Callable[[str], str] = lambda t: t,
        status: ConnectorStatus | None = None,
    ) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._context = context
        self._tracer = tracer_provider.get_tracer("ablo-connector", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._redact = redact
        self._status = status

    def request_started(self, frame: RequestFrame) -> None:
        trace = self._trace
        headers = frame.headers
        carrier = {
            name: value
            for name in ("traceparent", "tracestate")
            if (value := _header(headers, name)) is not None
        }
        parent = self._propagator.extract(carrier) if carrier else None
        attributes: dict[str, str | int | float | bool] = {"ablo.request_id": frame.id}
        message_id = _header(headers, "webhook-id")
        if message_id:
            attributes["ablo.message_id"] = message_id
        status = self._status
        if status is not None and status.source_id:
            attributes["ablo.source_id"] = status.source_id
        span = self._tracer.start_span(
            "request",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        # The request's own task: the span is current for it alone.
        token = self._context.attach(trace.set_span_in_context(span))
        _current_span.set((span, token))

    def request_done(self, frame: RequestFrame, answer: AnsweredRequest, seconds: float) -> None:
        current = _current_span.get()
        if current is None:  # refused while draining: never started
            return
        _current_span.set(None)
        span, token = current
        _describe(span, answer, seconds)
        if answer.status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, answer.error or ""))
        span.end()
        self._context.detach(token)

    def request_abandoned(self, frame: RequestFrame, error: BaseException) -> None:
        current = _current_span.get()
        if current is None:
            return
        _current_span.set(None)
        span, token = current
        self._failed(span, error)  # cancelled while draining, most likely
        span.end()
        self._context.detach(token)

    @contextlib.contextmanager
    def handler_span(self, method: Callable[..., Any]) -> Iterator[None]:
        """The span of one call into the source, current while it runs."""
        name = str(getattr(method, "__qualname__", None) or getattr(method, "__name__", "handler"))
        with self._tracer.start_as_current_span(
            name,
            attributes={"code.function": str(getattr(method, "__name__", name))},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except SourceError as error:  # the handler's chosen answer
                span.set_attribute("ablo.error_code", error.code)
                span.set_attribute("ablo.status", error.status)
                if error.status >= 500:
                    span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error.code))
                raise
            except BaseException as error:
                self._failed(span, error)
                raise

    def _failed(self, span: Span, error: BaseException) -> None:
        redact = self._redact
        span.record_exception(
            error,
            attributes={
                "exception.message": redact(str(error))[:_MAX_EXCEPTION_TEXT],
                "exception.stacktrace": redact("".join(traceback.format_exception(error)))[
                    -_MAX_EXCEPTION_TEXT:
                ],
            },
        )
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, type(error).__name__))


def _describe(span: Span, answer: AnsweredRequest, seconds: float) -> None:
    # One call: each set_attribute takes the span's lock.
    attributes: dict[str, str | int | float | bool] = {
        "ablo.status": answer.status,
        "ablo.duration_ms": round(seconds * 1000, 3),
    }
    if answer.operation:
        span.update_name(answer.operation)
        attributes["ablo.operation"] = answer.operation
    if answer.model:
        attributes["ablo.model"] = answer.model
    if answer.error:
        attributes["ablo.error_code"] = answer.error
    if answer.replayed:
        attributes["ablo.replayed"] = True
    span.set_attributes(attributes)


# ------------------------------------------------------------ configuration


class _Unavailable(Exception):
    """Tracing was asked for but cannot be set up; the message says why."""


def _asks_for_traces(environ: Mapping[str, str]) -> bool:
    exporters = {n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")} - {""}
    if exporters:
        return exporters != {"none"}
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def request_tracing(
    provider: TracerProvider | None = None,
    *,
    redact: Callable[[str], str] = lambda t: t,
    status: ConnectorStatus | None = None,
    environ: Mapping[str, str] = os.environ,
) -> RequestTracing | None:
    """Tracing with ``provider``, or as the ``OTEL_*`` variables (or an embedding
    program's global provider) configured it; None when it is off."""
    if provider is not None:
        return enable(provider, redact=redact, status=status)
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        if _asks_for_traces(environ):
            log.warning(
                "OTEL_* variables ask for traces, but OpenTelemetry is not installed: "
                "pip install 'ablo-connector[otel]'. Serving without traces."
            )
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):  # nobody set one up
        if not _asks_for_traces(environ):
            return None
        try:
            provider = _provider_from(environ)
        except _Unavailable as error:
            log.warning("cannot export traces: %s. Serving without traces.", error)
            return None
        trace.set_tracer_provider(provider)
    return enable(provider, redact=redact, status=status)


def enable(
    provider: TracerProvider,
    *,
    redact: Callable[[str], str],
    status: ConnectorStatus | None = None,
) -> RequestTracing:
    """Tracing with ``provider``, and trace ids on JSON log lines."""
    from opentelemetry import trace

    def current_ids() -> tuple[str, str] | None:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    logs.set_trace_lookup(current_ids)
    return RequestTracing(provider, redact=lambda text: logs.redact(redact(text)), status=status)


def _provider_from(environ: Mapping[str, str]) -> TracerProvider:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise _Unavailable(
            "the OpenTelemetry SDK is not installed (pip install 'ablo-connector[otel]')"
        ) from None
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "ablo-connector"}))
    # The SDK's own exit handler waits for every export to finish, retries
    # included: a collector that is down would hold a stopping connector for
    # as long as the exporter retries. Flush for a bounded time instead; the
    # export thread is a daemon and ends with the process.
    provider = SdkTracerProvider(resource=resource, shutdown_on_exit=False)
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    for name in [n for n in names if n and n != "none"] or ["otlp"]:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    atexit.register(_flush_briefly, provider)
    return provider


def _flush_briefly(provider: Any) -> None:
    """Export what is queued, waiting at most a moment (the SDK's flush ignores its timeout)."""
    flushing = threading.Thread(target=provider.force_flush, name="ablo-otel-flush", daemon=True)
    flushing.start()
    flushing.join(_EXIT_FLUSH_SECONDS)


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "otlp":
        # The OTLP default protocol the specification recommends; the extra installs its exporter.
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).strip()
        if protocol not in _OTLP_BY_PROTOCOL:
            raise _Unavailable(f"OTLP protocol {protocol!r} is not one of grpc, http/protobuf")
        name = _OTLP_BY_PROTOCOL[protocol]
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        hint = (
            " (pip install opentelemetry-exporter-otlp-proto-grpc)"
            if name == "otlp_proto_grpc"
            else ""
        )
        raise _Unavailable(f"no trace exporter named {name!r} is installed{hint}")
    try:
        return next(iter(found)).load()()
    except Exception as error:
        raise _Unavailable(f"the {name!r} exporter failed to start: {error}") from None
