"""How does an operator see it? State, health, metrics, systemd, logs.

- :mod:`.status`: where the connector is now, and the observer hooks;
- :mod:`.health`: ``/healthz``, ``/readyz`` and ``/metrics`` over plain HTTP;
- :mod:`.metrics`: the Prometheus series (imported only when served);
- :mod:`.systemd`: ``Type=notify`` readiness, status and watchdog;
- :mod:`.logs`: logging set-up (text or JSON lines), with every secret redacted;
- :mod:`.probe`: the source's own health check, on a schedule;
- :mod:`.tracing`: OpenTelemetry spans (the ``otel`` extra), off unless configured.
"""
