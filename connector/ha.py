"""Who may dial? Leader election for standby replicas.

The engine keeps one connector per source, so replicas must not all dial:
with ``--ha-lock URL`` a replica dials only while it holds the lock, and the
others wait. A backend is a :class:`LeaderLock`: try to take the lock, say
when it was lost, give it back. ``file:///path`` (``flock``, for replicas on
one host) and ``postgresql://…`` (a session advisory lock, for replicas on
any hosts that reach the database); others plug in through
:func:`lock_from_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["FileLock", "LeaderLock", "PostgresLock", "lock_from_url"]

log = logging.getLogger("connector.ha")


class LeaderLock:
    """One lock per source, held by at most one replica at a time."""

    description = "lock"
    # After taking the lock, wait this long before dialing: time for a leader
    # that lost the lock to notice and fence itself, so two never overlap.
    settle_delay = 0.0

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits for a holder."""
        raise NotImplementedError

    async def wait_lost(self) -> None:
        """Return when the lock is no longer ours (backend gone, lock stolen)."""
        raise NotImplementedError

    async def release(self) -> None:
        """Give the lock back at once, so the next replica can take over."""
        raise NotImplementedError


class FileLock(LeaderLock):
    """An exclusive ``flock`` on a file, for replicas on one host.

    The lock dies with the process (the kernel drops it), so a killed leader
    is replaced at the next standby's attempt. Deleting or replacing the file
    counts as losing the lock: the leader fences itself.
    """

    def __init__(self, path: str, *, check_interval: float = 0.25) -> None:
        self.path = path
        self.description = f"file://{path}"
        self._check_interval = check_interval
        self.settle_delay = 2 * check_interval
        self._fd: int | None = None

    async def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if not self._same_file(fd):  # replaced between open and flock: try again later
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    async def wait_lost(self) -> None:
        while self._fd is not None and self._same_file(self._fd):
            await asyncio.sleep(self._check_interval)

    async def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None


class PostgresLock(LeaderLock):
    """A session-level advisory lock on a dedicated PostgreSQL connection.

    The lock lives exactly as long as the session: a killed leader's lock is
    released by the server when its connection drops, and a leader that
    loses its connection (TCP keepalives and a 1 s probe notice) has lost the
    lock. The lock key is derived from ``name`` (the URL's ``name`` query
    parameter, default ``default``), never from the API key: give each
    source's replica group its own name.
    """

    def __init__(self, conninfo: str, name: str, *, probe_interval: float = 1.0) -> None:
        self._conninfo = conninfo
        self.name = name
        self.key = int.from_bytes(
            hashlib.sha256(f"ablo-connector:{name}".encode()).digest()[:8], "big", signed=True
        )
        self.description = f"postgresql advisory lock {name!r}"
        self._probe_interval = probe_interval
        self.settle_delay = 0.0  # the server drops a dead session's lock itself
        self._connection: Any = None

    async def try_acquire(self) -> bool:
        import psycopg

        try:
            connection = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=5, keepalives=1,
                keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                application_name="ablo-connector-ha",
            )  # fmt: skip
        except psycopg.Error as error:
            raise OSError(f"cannot connect to PostgreSQL: {error}".strip()) from None
        try:
            cursor = await connection.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            row = await cursor.fetchone()
        except psycopg.Error as error:
            await connection.close()
            raise OSError(f"advisory lock query failed: {error}".strip()) from None
        if not row or not row[0]:
            await connection.close()
            return False
        self._connection = connection
        return True

    async def wait_lost(self) -> None:
        import psycopg

        while self._connection is not None:
            await asyncio.sleep(self._probe_interval)
            try:
                await asyncio.wait_for(
                    self._connection.execute("SELECT 1"), self._probe_interval * 3
                )
            except (psycopg.Error, OSError, TimeoutError) as error:
                log.warning("the PostgreSQL session holding the HA lock failed: %s", error)
                return

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            with contextlib.suppress(Exception):
                await connection.close()


def lock_from_url(url: str) -> LeaderLock:
    """The lock backend a ``--ha-lock`` URL names; ValueError if unknown."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        query = parse_qsl(parts.query, keep_blank_values=True)
        name = next((value for key, value in query if key == "name"), "default") or "default"
        rest = urlencode([(key, value) for key, value in query if key != "name"])
        return PostgresLock(urlunsplit(parts._replace(query=rest)), name)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if not path or parts.netloc not in ("", "localhost"):
            raise ValueError(f"--ha-lock {url!r}: use file:///absolute/path")
        return FileLock(path)
    raise ValueError(
        f"--ha-lock {url!r}: unsupported scheme {parts.scheme!r} (supported: file://, postgresql://)"
    )
