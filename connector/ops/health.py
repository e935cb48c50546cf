"""Is it alive, is it ready? Health, readiness and metrics over plain HTTP.

``GET /healthz``: 200 while the process and its event loop answer (a
blocked loop cannot answer at all, which is what a liveness probe needs).
``GET /readyz``: 200 only while the connector is registered and ``ready``
and its source's probe (if it has one) passes, otherwise 503 with the
reason in ``lastError``; both carry a small JSON body. ``GET /metrics``:
Prometheus text format. ``HEAD`` answers the same without a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from .. import _http
from .status import ConnectorStatus, State

if TYPE_CHECKING:  # prometheus-client is imported only when metrics are served
    from .metrics import Metrics

__all__ = ["HealthServer", "parse_address"]

log = logging.getLogger("connector.health")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) into its parts; ValueError if not."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    return host.strip("[]"), int(port_text)


class HealthServer:
    def __init__(self, status: ConnectorStatus, metrics: Metrics | None, address: str) -> None:
        self._status = status
        self._metrics = metrics
        self._host, self._port = parse_address(address)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        self._server = await _http.start_http_server(
            self._handle, self._host, self._port, max_body=0
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info(
            "health endpoints on http://%s:%d (/healthz, /readyz, /metrics)", self._host, self._port
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # From Python 3.12 this waits for open connections too (a scraper's
            # keep-alive one): a stop must not wait on a client.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _handle(self, request: _http.Request) -> _http.Reply:
        if request.method not in ("GET", "HEAD"):
            return _http.Reply.json(405, {"error": "method_not_allowed"})
        status = self._status
        if request.path == "/healthz":
            healthy = status.healthy
            word = "ok" if healthy else "stopped" if status.state is State.STOPPED else "stuck"
            body: dict[str, object] = {"status": word, "state": status.state.value}
            if status.handlers_exhausted:
                body["reason"] = "handler_threads_stuck"
            return _http.Reply.json(200 if healthy else 503, body)
        if request.path == "/readyz":
            return _http.Reply.json(200 if status.serving else 503, status.as_dict())
        if request.path == "/metrics" and self._metrics is not None:
            return _http.Reply(
                200, self._metrics.render(), {"Content-Type": self._metrics.content_type}
            )
        return _http.Reply.json(404, {"error": "not_found"})
