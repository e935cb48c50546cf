"""OpenTelemetry traces: one span per request, a child per handler call, the engine's parent."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from connector import Config, DataSource, RequestContext
from connector.daemon.supervisor import Connector
from connector.dev.engine import DevEngine
from connector.ops import tracing
from connector.wire.frames import RequestFrame, ResponseFrame
from tests.handlers import TestSource
from tests.helpers import connector_args, eventually, free_port, process

KEY = "sk_test_tracing_4d1e9a"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class SyncTraced(DataSource):
    """A plain ``def`` handler (a worker thread) that makes a span of its own."""

    def __init__(self, provider: TracerProvider) -> None:
        self._tracer = provider.get_tracer("handler-code")

    def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        with self._tracer.start_as_current_span("query rows"):
            return {"id": id}


def _frame(
    engine: DevEngine, body: dict[str, Any], request_id: str, **headers: str
) -> RequestFrame:
    text = json.dumps(body)
    signed = engine.sign(f"msg_{request_id}", text)
    return RequestFrame(
        id=request_id, method="POST", url="u", headers={**signed, **headers}, body=text
    )


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (found,) = [span for span in spans if span.name == name]
    return found


async def test_spans_per_request_and_handler_call_under_the_engines_parent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ABLO_API_KEY", KEY)  # TestSource's "boom" puts it in its message
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with DevEngine(KEY) as engine:
        connector = Connector(
            Config(api_key=KEY, base_url=engine.base_url, request_timeout=0.5),
            TestSource(),
            tracer_provider=provider,
        )
        task = asyncio.create_task(connector.run())
        try:
            await connector.wait_ready(10)
            load = {"type": "load", "model": "task", "id": "t1"}
            answer = await engine.exchange(
                _frame(engine, load, "r_ok", Traceparent=TRACEPARENT), "r_ok"
            )
            assert isinstance(answer, ResponseFrame) and answer.status == 200
            boom = {"type": "load", "model": "task", "id": "boom"}
            answer = await engine.exchange(_frame(engine, boom, "r_boom"), "r_boom")
            assert isinstance(answer, ResponseFrame) and answer.status == 500
            await eventually(lambda: len(exporter.get_finished_spans()) >= 4, timeout=5)
        finally:
            connector.stop()
            await asyncio.wait_for(task, 10)

    spans = exporter.get_finished_spans()
    ok, failed = [s for s in spans if s.name == "load"]
    # The request span: a SERVER span named after the operation, child of the
    # engine's traceparent, with the request's fields.
    assert ok.kind is SpanKind.SERVER
    assert format(ok.context.trace_id, "032x") == TRACE_ID
    assert ok.parent is not None and format(ok.parent.span_id, "016x") == PARENT_ID
    assert ok.attributes is not None
    assert {k: ok.attributes[k] for k in (
        "ablo.request_id", "ablo.message_id", "ablo.operation", "ablo.model", "ablo.status",
        "ablo.source_id",
    )} == {
        "ablo.request_id": "r_ok", "ablo.message_id": "msg_r_ok", "ablo.operation": "load",
        "ablo.model": "task", "ablo.status": 200, "ablo.source_id": "src_dev",
    }  # fmt: skip
    assert float(str(ok.attributes["ablo.duration_ms"])) > 0
    assert ok.status.status_code is StatusCode.UNSET

    # The handler call: a child span, named after the method.
    handler_spans = [s for s in spans if s.name == "TestSource.load"]
    assert len(handler_spans) == 2
    for child, request in zip(handler_spans, (ok, failed), strict=True):
        assert child.parent is not None and child.parent.span_id == request.context.span_id
        assert child.context.trace_id == request.context.trace_id

    # No traceparent: a new trace. A failure marks both spans, and the
    # exception event is redacted like a log line.
    assert failed.parent is None and failed.context.trace_id != ok.context.trace_id
    assert failed.attributes is not None
    assert failed.attributes["ablo.status"] == 500
    assert failed.attributes["ablo.error_code"] == "source_connector_handler_error"
    assert failed.status.status_code is StatusCode.ERROR
    failed_call = handler_spans[1]
    assert failed_call.status.status_code is StatusCode.ERROR
    (event,) = failed_call.events
    assert event.name == "exception" and event.attributes is not None
    assert "database refused credentials" in str(event.attributes["exception.message"])
    assert KEY not in str(event.attributes["exception.message"])
    assert KEY not in str(event.attributes["exception.stacktrace"])


async def test_a_worker_thread_handler_sees_its_span_as_current() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with DevEngine(KEY) as engine:
        connector = Connector(
            Config(api_key=KEY, base_url=engine.base_url),
            SyncTraced(provider),
            tracer_provider=provider,
        )
        task = asyncio.create_task(connector.run())
        try:
            await connector.wait_ready(10)
            result = await engine.request({"type": "load", "model": "task", "id": "t1"})
            assert result.status == 200
            await eventually(lambda: len(exporter.get_finished_spans()) >= 3, timeout=5)
        finally:
            connector.stop()
            await asyncio.wait_for(task, 10)
    spans = exporter.get_finished_spans()
    request, call, own = (
        _by_name(spans, "load"), _by_name(spans, "SyncTraced.load"), _by_name(spans, "query rows")
    )  # fmt: skip
    assert call.parent is not None and call.parent.span_id == request.context.span_id
    assert own.parent is not None and own.parent.span_id == call.context.span_id


def test_off_unless_the_otel_variables_ask_for_traces(caplog: pytest.LogCaptureFixture) -> None:
    assert tracing.request_tracing(environ={}) is None
    assert tracing.request_tracing(environ={"OTEL_TRACES_EXPORTER": "none"}) is None
    asked = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert tracing.request_tracing(environ={**asked, "OTEL_SDK_DISABLED": "true"}) is None
    # Asked for, but with an exporter that is not installed: a warning, no traces.
    with caplog.at_level(logging.WARNING):
        assert tracing.request_tracing(environ={"OTEL_TRACES_EXPORTER": "zipkin_json"}) is None
    assert "no trace exporter named 'zipkin_json' is installed" in caplog.text
    # None of this may have installed a global provider behind the tests' back.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_without_the_extra_a_request_for_traces_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with caplog.at_level(logging.WARNING):
        assert tracing.request_tracing(environ={"OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert "pip install 'ablo-connector[otel]'" in caplog.text


async def test_the_daemon_exports_spans_as_the_otel_variables_say() -> None:
    """The whole path from the environment: the SDK's console exporter on stdout."""
    env = {
        "ABLO_API_KEY": KEY,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "orders-connector",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    async with (
        DevEngine(KEY) as engine,
        process(connector_args(engine.base_url, "tests.handlers:TestSource"), env) as connector,
    ):
        await engine.wait_attached(10)
        load = {"type": "load", "model": "task", "id": "t1"}
        answer = await engine.exchange(
            _frame(engine, load, "r_env", traceparent=TRACEPARENT), "r_env"
        )
        assert isinstance(answer, ResponseFrame) and answer.status == 200
        await eventually(lambda: '"name": "TestSource.load"' in connector.output(), timeout=10)
        connector.signal(signal.SIGTERM)
        assert await connector.wait(10) == 0
        output = connector.stdout_path.read_text()
    decoder = json.JSONDecoder()
    spans, position = [], output.find("{")
    while position != -1:
        span, end = decoder.raw_decode(output, position)
        spans.append(span)
        position = output.find("{", end)
    request = next(s for s in spans if s["name"] == "load")
    assert request["context"]["trace_id"] == "0x" + TRACE_ID
    assert request["parent_id"] == "0x" + PARENT_ID
    assert request["attributes"]["ablo.request_id"] == "r_env"
    assert request["resource"]["attributes"]["service.name"] == "orders-connector"


async def test_a_collector_that_is_down_does_not_hold_a_stopping_connector() -> None:
    env = {"ABLO_API_KEY": KEY, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    async with (
        DevEngine(KEY) as engine,
        process(connector_args(engine.base_url, "tests.handlers:TestSource"), env) as connector,
    ):
        await engine.wait_attached(10)
        for _ in range(20):
            assert (await engine.request({"type": "load", "model": "m", "id": "x"})).status == 200
        connector.signal(signal.SIGTERM)
        started = time.monotonic()
        assert await connector.wait(20) == 0
        # The exporter retries for many seconds; the exit waits for it at most 2 s.
        assert time.monotonic() - started < 6, connector.output()
