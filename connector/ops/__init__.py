"""How does an operator see it? State, health, metrics, systemd, logs.

- :mod:`.status`: where the connector is now, and the observer hooks;
- :mod:`.health`: ``/healthz``, ``/readyz`` and ``/metrics`` over plain HTTP;
- :mod:`.metrics`: the Prometheus series (imported only when served);
- :mod:`.systemd`: ``Type=notify`` readiness, status and watchdog;
- :mod:`.logs`: logging set-up, with every secret redacted.
"""
