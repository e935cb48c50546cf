"""What does systemd hear? The notify protocol: READY=1, STOPPING=1, STATUS=, the watchdog.

A few datagrams on ``$NOTIFY_SOCKET``; no dependency. Only active when
systemd set that variable (``Type=notify``), so it is harmless elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Final

from .status import ConnectorStatus, State

__all__ = ["SystemdNotifier"]

log = logging.getLogger("connector.systemd")

_STATUS_TEXT: Final = {
    State.STARTING: "starting",
    State.STANDBY: "standby: another replica holds the HA lock",
    State.CONNECTING: "connecting to the engine",
    State.BACKOFF: "disconnected, waiting to reconnect",
    State.STOOD_DOWN: "superseded by a newer connector; standing down",
    State.DRAINING: "draining in-flight requests",
    State.STOPPED: "stopped",
}


class SystemdNotifier:
    def __init__(self, address: str, watchdog_interval: float | None) -> None:
        # A leading "@" names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._watchdog_interval = watchdog_interval
        self._ready_sent = False
        self._watchdog: asyncio.Task[None] | None = None

    @classmethod
    def from_environment(cls) -> SystemdNotifier | None:
        address = os.environ.get("NOTIFY_SOCKET")
        if not address:
            return None
        interval = None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            interval = (
                int(usec) / 1_000_000 / 2
            )  # ping twice per period, as sd_watchdog_enabled advises
        return cls(address, interval)

    def notify(self, *lines: str) -> None:
        try:
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as error:
            log.debug("cannot notify systemd: %s", error)

    def attach(self, status: ConnectorStatus) -> None:
        status.subscribe(self._on_status)
        if self._watchdog_interval:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._pet(self._watchdog_interval, status)
            )

    def _on_status(self, status: ConnectorStatus) -> None:
        if status.handlers_exhausted:
            self.notify(f"STATUS=unhealthy: {status.stuck_handlers} handler threads stuck")
            return
        if status.state is State.READY and status.source_healthy is False:
            text = f"STATUS=ready, but the source cannot serve: {status.source_error or '?'}"
        elif status.state is State.READY:
            text = f"STATUS=ready: serving source {status.source_id or '?'}"
        else:
            text = f"STATUS={_STATUS_TEXT.get(status.state, status.state.value)}"
        # A standby is started and healthy too: without READY=1 a Type=notify
        # unit would time out its start and restart it forever.
        if not self._ready_sent and status.state in (State.READY, State.STANDBY):
            self._ready_sent = True
            self.notify("READY=1", text)
        else:
            self.notify(text)

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping: draining in-flight requests")

    async def _pet(self, interval: float, status: ConnectorStatus) -> None:
        # Runs on the event loop: a loop that stops turning stops the pings,
        # and systemd restarts the service. So does a connector whose handler
        # threads are all stuck, which only a restart can free.
        while True:
            if status.healthy:
                self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        with contextlib.suppress(OSError):
            self._socket.close()
