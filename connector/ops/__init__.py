"""How does an operator see it? State, health, metrics, systemd, logs, the inspector.

- :mod:`.status`: where the connector is now, and the observers (metrics,
  tracing, the inspector) the connection tells of each request;
- :mod:`.health`: ``/healthz``, ``/readyz`` and ``/metrics`` over plain HTTP;
- :mod:`.metrics`: the Prometheus series (imported only when served);
- :mod:`.systemd`: ``Type=notify`` readiness, status and watchdog;
- :mod:`.logs`: logging set-up (text or JSON lines), with every secret redacted;
- :mod:`.probe`: the source's own health check, on a schedule;
- :mod:`.tracing`: OpenTelemetry spans (the ``otel`` extra), off unless configured;
- :mod:`.inspector`: a local page of the recent requests, with replay (``--inspect``).
"""
