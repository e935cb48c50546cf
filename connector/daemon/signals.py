"""How does the daemon stop? SIGTERM and SIGINT, as a service manager sends them.

The first signal drains (in-flight requests finish, up to the grace period)
and the process exits 0; a second one abandons what is still running and
exits 1. The handlers are removed when the connector stops, so an embedding
program gets its own back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

from ..errors import EX_CONFIG, EX_FAILURE, EX_OK, AuthenticationFailed, ConfigError
from .supervisor import Connector

__all__ = ["run_until_signalled"]

log = logging.getLogger("connector.signals")


@contextlib.contextmanager
def _signal_handlers(connector: Connector) -> Iterator[list[int]]:
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def handle(signum: int) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            log.info("%s received: finishing in-flight requests, then exiting", name)
            connector.stop()
        else:
            log.warning("%s received again: exiting now", name)
            connector.stop(force=True)

    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, handle, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    try:
        yield received
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def run_until_signalled(connector: Connector) -> int:
    """Run ``connector`` as a daemon until a signal; returns the exit status.

    0 after a drain, 1 when a second signal forced the exit, 78 for a
    configuration problem or (with ``exit_on_auth_failure``) a rejected key.
    """
    with _signal_handlers(connector) as received:
        try:
            await connector.run()
        except AuthenticationFailed:
            return EX_CONFIG
        except ConfigError as error:
            log.error("%s", error)
            return EX_CONFIG
    return EX_FAILURE if len(received) > 1 else EX_OK
