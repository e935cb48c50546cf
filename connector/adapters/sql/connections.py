"""Which connection runs a read? A small pool of driver connections used
straight from the event loop.

A load by id, a page of events and a list page are one statement each. Through
SQLAlchemy's pool, checking a connection out and back in (greenlets, pool
events, the reset on check-in) cost more CPU than the statement itself:
about 70 µs of the 190 µs a load cost (``bench/sql.py``). These reads take
their connection from :class:`ReadConnections` instead, which does the
least a pool must do:

- at most ``size`` connections, opened on demand with the engine's own
  connect arguments, in autocommit (one statement needs no transaction);
- a free connection goes to the longest waiter first;
- a connection older than ``recycle`` seconds is closed instead of reused,
  and so is one opened before :meth:`ReadConnections.renew` (its prepared
  statements predate a schema change);
- a connection that failed is closed, and when it failed because the
  server went away, every idle one is closed too (opened before the failure,
  they are suspect): the caller's retry then opens a fresh one;
- a wait longer than ``timeout`` raises :class:`sqlalchemy.exc.TimeoutError`,
  as SQLAlchemy's pool does, so both pools read the same to the adapter.

On PostgreSQL, MySQL and MariaDB, commits take their connections from a
second pool of this kind (see commits.py), each commit one explicit
transaction. Probes and reflection keep SQLAlchemy's pool, and so does a list
page whose SQL SQLAlchemy completes only when it runs it (an IN list).

What the pool must know of a driver's connections (is it closed, is it
broken, close it now) is the dialect's (:class:`DriverConnections`); the
default is psycopg's.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc

__all__ = ["DriverConnections", "ReadConnections"]


class DriverConnections(Protocol):
    """What the pool asks of a driver's connections."""

    def closed(self, connection: Any) -> bool:
        """Whether ``connection`` is closed (by us, the server or the network)."""
        ...

    def broken(self, connection: Any) -> bool:
        """Whether ``connection`` failed because the server went away."""
        ...

    def discard(self, connection: Any) -> None:
        """Close ``connection`` now, without waiting for the server."""
        ...


class _Psycopg:
    def closed(self, connection: Any) -> bool:
        return bool(connection.closed)

    def broken(self, connection: Any) -> bool:
        return bool(connection.broken)

    def discard(self, connection: Any) -> None:
        connection.pgconn.finish()  # libpq says goodbye to the server; nothing to wait for


class ReadConnections:
    """Up to ``size`` driver connections for single-statement reads."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        size: int,
        *,
        timeout: float = 10.0,
        recycle: float = 1800.0,
        driver: DriverConnections | None = None,
    ) -> None:
        self._connect = connect
        self._driver: DriverConnections = driver or _Psycopg()
        self.size = size
        self._timeout = timeout
        self._recycle = recycle
        self._idle: collections.deque[tuple[Any, float]] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[tuple[Any, float] | None]] = (
            collections.deque()
        )
        self.open = 0
        self._closed = False
        self._renewed_at = -math.inf

    async def acquire(self) -> tuple[Any, float]:
        """A connection and when it was opened; give it back with :meth:`release`."""
        while self._idle:
            connection, opened = self._idle.pop()  # the most recent: it is warm
            if self._driver.closed(connection) or self._expired(opened):
                self._discard(connection)
                continue
            return connection, opened
        if self.open < self.size:
            self.open += 1
            return await self._open_reserved()
        waiter: asyncio.Future[tuple[Any, float] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._timeout):
                handed = await waiter
        except TimeoutError:
            if _handed(waiter):
                self._give_back(waiter.result())  # handed over as the wait timed out
            raise sa_exc.TimeoutError(
                f"no database connection for a read became free within {self._timeout:g} s "
                f"({self.size} in use)"
            ) from None
        except BaseException:
            if _handed(waiter):
                self._give_back(waiter.result())  # handed over just as we were cancelled
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
        if handed is None:  # a slot was freed and reserved for us: open a connection
            return await self._open_reserved()
        return handed

    def release(
        self, connection: Any, opened: float, *, failed: bool = False, lost: bool = False
    ) -> None:
        """Give a connection back; ``failed`` closes it, and the idle ones too
        when it is broken or ``lost`` (the server went away: they are suspect).

        One past ``recycle`` is closed here too: under steady load a
        connection goes from caller to waiter and is never idle.
        """
        driver = self._driver
        if failed or self._closed or driver.closed(connection) or self._expired(opened):
            if lost or driver.closed(connection) or driver.broken(connection):
                self._drop_idle()
            self._discard(connection)
            return
        self._give_back((connection, opened))

    def renew(self) -> None:
        """Replace every connection open now: the idle ones at once, the busy
        ones when they come back (their prepared statements are stale)."""
        self._renewed_at = time.monotonic()
        self._drop_idle()

    def _expired(self, opened: float) -> bool:
        return opened <= self._renewed_at or time.monotonic() - opened > self._recycle

    async def close(self) -> None:
        """Close every idle connection now, and the busy ones as they come back."""
        self._closed = True
        self._drop_idle()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(sa_exc.InterfaceError(None, None, Exception("pool closed")))

    def forget(self) -> None:
        """Close the idle connections without waiting (at exit, outside a loop)."""
        self._drop_idle()

    async def _open_reserved(self) -> tuple[Any, float]:
        """Open a connection in a slot already counted in ``open``."""
        try:
            connection = await self._connect()
        except BaseException:
            self.open -= 1
            self._offer_free_slots()
            raise
        return connection, time.monotonic()

    def _give_back(self, handed: tuple[Any, float] | None) -> None:
        """A connection (or, None, a reserved slot) to the longest waiter, else idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return
        if handed is None:
            self.open -= 1
        else:
            self._idle.append(handed)

    def _offer_free_slots(self) -> None:
        while self._waiters and self.open < self.size and not self._closed:
            self.open += 1
            self._give_back(None)

    def _drop_idle(self) -> None:
        while self._idle:
            connection, _ = self._idle.popleft()
            self._discard(connection)

    def _discard(self, connection: Any) -> None:
        self.open -= 1
        if not self._driver.closed(connection):
            self._driver.discard(connection)
        self._offer_free_slots()


def _handed(waiter: asyncio.Future[Any]) -> bool:
    """Whether a waiter was given a connection or a slot it must pass on."""
    return waiter.done() and not waiter.cancelled() and waiter.exception() is None
