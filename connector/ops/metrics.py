"""What has it done? Prometheus metrics for one connector.

Every series is prefixed ``ablo_connector_``, carries its unit in its name,
and has bounded labels: operation, HTTP status, failure code or outcome;
never a model, a row id or a message id. The registry is private to the
connector, so several connectors in one process never collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import Enum as EnumMetric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .._version import __version__
from ..wire.bodies import OPERATIONS
from ..wire.frames import RequestFrame
from .status import AnsweredRequest, ConnectorStatus, Observer, State

__all__ = ["CONTENT_TYPE", "SOURCE_GAUGES", "Metrics"]

#: The series a source may measure at its probe (``ConnectorStatus.source_gauges``).
SOURCE_GAUGES: Final = {
    "ablo_connector_outbox_events": "Events held in the SQL adapter's outbox (the span of "
    "cursors it holds: rolled-back writes leave gaps).",
    "ablo_connector_outbox_oldest_unread_age_seconds": "Age of the oldest outbox event the "
    "engine has not yet paged past (0 when it has read them all): a stalled engine grows it.",
}

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_DURATION_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0,
)  # fmt: skip


class Metrics(Observer):
    """Counts requests, connection attempts and rejections; renders them."""

    content_type: Final = CONTENT_TYPE

    def __init__(self, status: ConnectorStatus) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._status = status
        self._last_ready: float | None = None
        Gauge("ablo_connector_info", "Build information.", ["version"], registry=registry).labels(
            __version__
        ).set(1)
        self._state = EnumMetric(
            "ablo_connector_connection_state",
            "Where the connector is: ready means registered and serving.",
            states=[state.value for state in State],
            registry=registry,
        )
        self._attempts = Counter(
            "ablo_connector_connection_attempts_total",
            "Connection attempts by outcome (ready, failed, auth_rejected, rate_limited, ...).",
            ["outcome"],
            registry=registry,
        )
        Gauge(
            "ablo_connector_ready_duration_seconds",
            "Seconds it has been ready and serving, as /readyz says (0 when not).",
            registry=registry,
        ).set_function(lambda: status.seconds_ready or 0.0)
        Gauge(
            "ablo_connector_seconds_since_last_ready",
            "Seconds since it was last ready and serving, as /readyz says (0 while it is, "
            "-1 if never).",
            registry=registry,
        ).set_function(self._seconds_since_ready)
        Gauge(
            "ablo_connector_in_flight_requests",
            "Handler calls under way.",
            registry=registry,
        ).set_function(lambda: status.in_flight)
        Gauge(
            "ablo_connector_stuck_handler_threads",
            "Plain-def handler calls still running past their request's deadline.",
            registry=registry,
        ).set_function(lambda: status.stuck_handlers)
        self._requests = Counter(
            "ablo_connector_requests_total",
            "Requests answered, by operation and HTTP status.",
            ["operation", "status"],
            registry=registry,
        )
        self._duration = Histogram(
            "ablo_connector_request_duration_seconds",
            "Time from reading a request to handing its answer to the socket.",
            ["operation"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self._signature_failures = Counter(
            "ablo_connector_signature_failures_total",
            "Requests refused by signature verification, by code.",
            ["code"],
            registry=registry,
        )
        self._replays = Counter(
            "ablo_connector_replays_coalesced_total",
            "Requests answered from an earlier run of the same webhook-id.",
            registry=registry,
        )
        self._timeouts = Counter(
            "ablo_connector_request_timeouts_total",
            "Requests whose handler missed --request-timeout.",
            registry=registry,
        )
        self._rejected = Counter(
            "ablo_connector_frames_rejected_total",
            "Frames refused, by reason: malformed, invalid_request, oversize (refused one by one), "
            "oversize_closed (too large to read: the connection was closed and redialed).",
            ["reason"],
            registry=registry,
        )
        # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
        ProcessCollector(registry=registry)
        registry.register(_SourceHealth(status))
        self._state.state(status.state.value)
        status.subscribe(self._on_status)

    def _seconds_since_ready(self) -> float:
        if self._status.serving:
            return 0.0
        return -1.0 if self._last_ready is None else time.monotonic() - self._last_ready

    def _on_status(self, status: ConnectorStatus) -> None:
        if not status.serving and self._status_was_ready:
            self._last_ready = time.monotonic()
        self._status_was_ready = status.serving
        self._state.state(status.state.value)

    _status_was_ready = False

    def request_done(self, frame: RequestFrame, response: AnsweredRequest, seconds: float) -> None:
        operation = response.operation if response.operation in OPERATIONS else "none"
        self._requests.labels(operation, str(response.status)).inc()
        self._duration.labels(operation).observe(seconds)
        if response.replayed:
            self._replays.inc()
        error = response.error
        if error is not None:
            if response.status == 401:
                self._signature_failures.labels(error).inc()
            elif error == "source_connector_timeout":
                self._timeouts.inc()

    def frame_rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def attempt_ended(self, outcome: str) -> None:
        self._attempts.labels(outcome).inc()

    def count_full_table_shapes(self, count: Callable[[], int]) -> None:
        """Show ``count()`` as ``ablo_connector_full_table_list_shapes`` (a
        source that reads its list shapes' plans, as the SQL adapter does)."""
        Gauge(
            "ablo_connector_full_table_list_shapes",
            "List shapes served whose plan scans or sorts every row of their table "
            "(each logged once, with the index that would serve it).",
            registry=self.registry,
        ).set_function(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SourceHealth(Collector):
    """``ablo_connector_source_up``: 1 while the source's probe passes, 0 while
    it fails; absent for a source without a probe (nothing to say)."""

    def __init__(self, status: ConnectorStatus) -> None:
        self._status = status

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # the series comes and goes with the probe

    def collect(self) -> Iterator[GaugeMetricFamily]:
        healthy = self._status.source_healthy
        if healthy is not None:
            yield GaugeMetricFamily(
                "ablo_connector_source_up",
                "Whether the source's own probe (e.g. the SQL adapter's database) passes.",
                value=1.0 if healthy else 0.0,
            )
        for name, value in self._status.source_gauges.items():
            description = SOURCE_GAUGES.get(name)
            if description is not None:
                yield GaugeMetricFamily(name, description, value=value)
