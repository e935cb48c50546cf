"""Who may dial? Leader election for standby replicas.

The engine keeps one connector per source, so replicas must not all dial:
with ``--ha-lock URL`` a replica dials only while it holds the lock, and the
others wait. A backend is a :class:`LeaderLock`: try to take the lock,
confirm now and then that it is still ours, give it back. ``file:///path``
(``flock``, for replicas on one host), ``postgresql://…`` (a session
advisory lock, for replicas on any hosts that reach the database),
``mysql://…`` (``GET_LOCK`` on a dedicated session, in :mod:`.ha_mysql`) and
``k8s://namespace/lease`` (a Kubernetes Lease); :func:`lock_from_url` picks one.

Why two leaders never serve at once
-----------------------------------

One number per backend, ``settle_delay`` (S below), and two rules:

1. A leader serves a request only within S seconds of the *start* of its
   latest successful confirmation that it still holds the lock. The check
   runs as each request frame is taken off the socket, and before each dial
   (:meth:`LeaderLock.may_serve`), on this host's clock. Whatever delays
   the leader (a busy event loop, SIGSTOP, a VM pause, a lost packet), a
   late frame meets a closed window and waits for a fresh confirmation
   (:meth:`LeaderLock.confirm`), which fails if the lock is gone.
2. A replica that takes the lock waits S before it dials.

A successful confirmation proves the lock was still ours at some instant
after the confirmation started. So the lock was freed, at the earliest, after
the start ``c`` of the old leader's last successful confirmation, which
closes its window at ``c + S``. The new leader took the lock after it was
freed and dials no sooner than S later, so after ``c + S``: the old leader
has served its last request before the new one serves its first, and any
request sent after the new leader's first answer finds the old window shut.
Only the *rate* of each host's clock enters the argument, never its setting:
intervals are measured on ``CLOCK_BOOTTIME``, which NTP cannot step and which
keeps counting while a machine is suspended. This holds for every way a lock
can be lost: the holder dies, its session is killed or the file replaced by
someone else, its host is cut off, the database restarts.

Put as "the old leader's worst-case detection plus its time to stop reading
must end before the earliest moment another replica can hold *and use* the
lock": the worst-case detection is S after ``c`` (the window lapses by
itself, whether or not any message about the loss arrives), the time to stop
reading is zero (the check is made on each frame at the moment it would be
dispatched), and the earliest use is no sooner than ``c + S``, since the lock
was freed after ``c`` and its taker waits S.

Detection then decides only how soon an old leader lets go of its engine
socket and how long a take-over takes, never whether two replicas overlap:

================  =====================  ==========  =========  ==============================
backend           confirmation           every       S          a leader steps down when
================  =====================  ==========  =========  ==============================
file              ``stat`` vs ``fstat``  0.25 s      0.5 s      the path no longer names its
                                                                locked file
postgresql        ``pg_backend_pid()``   0.5 s       2 s        its session fails or closes
                  on the lock's session                         (the socket is watched), or
                                                                no confirmation for 2/3 T
mysql             ``IS_USED_LOCK()``,    0.5 s       2 s        its session fails or another
                  ``CONNECTION_ID()``                           answers, or no confirmation
                  on the lock's session                         for 2/3 T
k8s Lease         renewing the Lease     2T/15       4T/15      a write conflict, or no
                                                                renewal for 2/3 T
================  =====================  ==========  =========  ==============================

T is ``lease_duration`` (``--ha-lease-duration``, 15 s by default): how long a
vanished leader (host lost, cut off, frozen) keeps the lock. PostgreSQL
enforces it on the lock's own session with ``idle_session_timeout`` (14+),
``tcp_user_timeout`` (12+) and ``tcp_keepalives_*``, which any user may set;
MySQL and MariaDB with ``wait_timeout`` (and the ``net_*_timeout``s) on the
lock's session; a Lease expires T after a standby last *saw it change*, on
the standby's own clock, as client-go judges it. A take-over then takes: the time until the
lock is free (at once when the leader's process dies or its session is
killed; T when its host vanishes), plus one standby retry
(``ha_retry_interval``, 0.5 s), plus S, plus dialing the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import socket
import ssl
import stat
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError, describe_error

__all__ = [
    "DEFAULT_LEASE_DURATION",
    "FileLock",
    "LeaderLock",
    "LeaseLock",
    "PostgresLock",
    "lock_from_url",
]

log = logging.getLogger("connector.ha")

DEFAULT_LEASE_DURATION: Final = 15.0
MIN_LEASE_DURATION: Final = 3.0

_BOOTTIME: Final = getattr(time, "CLOCK_BOOTTIME", None)


def _now() -> float:
    """Seconds on a clock that is never stepped and counts through a suspend."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


class LeaderLock:
    """One lock per source, held by at most one replica at a time.

    A backend implements :meth:`try_acquire` (calling :meth:`_took` when it
    wins), :meth:`_check` (one confirmation) and :meth:`release`. While a
    replica leads, :meth:`wait_lost` confirms the lock every
    ``confirm_interval`` seconds; :meth:`may_serve` and :meth:`confirm` gate
    every request on those confirmations (see the module's docstring).
    """

    description = "lock"
    # Both sides of the fence: a leader serves only this long after the start
    # of its latest confirmation; a replica that takes the lock waits this
    # long before it dials.
    settle_delay = 0.0
    confirm_interval = 1.0
    # Step down when no confirmation succeeded for this long (a check that
    # hangs, a backend that keeps failing).
    lost_after = math.inf

    def __init__(self) -> None:
        self._held = False
        self._term = 0
        self._confirmed_at = -math.inf
        self._suspect = False
        self._watching = False
        self._checking: asyncio.Future[bool | None] | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None

    @property
    def held(self) -> bool:
        """Whether this replica believes it holds the lock (it may not serve on that alone)."""
        return self._held

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits for a holder."""
        raise NotImplementedError

    async def release(self) -> None:
        """Give the lock back at once, so the next replica can take over."""
        raise NotImplementedError

    async def _check(self) -> bool | None:
        """One confirmation: True if the lock was ours at some instant after
        the call started, False if it is not (any more), None if that could
        not be told this time (an OSError counts as None too)."""
        raise NotImplementedError

    def _abandon_check(self) -> None:
        """A check hangs past ``lost_after``: make it end (the lock is lost already)."""

    # -- the fence

    def may_serve(self) -> bool:
        """True while the latest confirmation is recent enough to serve a request on."""
        return self._held and not self._suspect and _now() < self._confirmed_at + self.settle_delay

    async def confirm(self) -> bool:
        """Wait until :meth:`may_serve` holds again (after a fresh confirmation);
        False as soon as the lock is known lost."""
        nudged = False
        while self._held:
            if self.may_serve():
                return True
            if not self._watching:
                await self._confirm_once()
                continue
            changed = self._changed_event()
            if not nudged:  # once: a failing backend is retried at its own pace
                self._wake_event().set()
                nudged = True
            await changed.wait()
        return False

    async def wait_lost(self) -> None:
        """Confirm the lock until it is lost; then return."""
        self._watching = True
        try:
            while self._held:
                wake = self._wake_event()
                with contextlib.suppress(TimeoutError):
                    # (asyncio.timeout: wait_for on 3.11 can drop a cancellation)
                    async with asyncio.timeout(self.confirm_interval):
                        await wake.wait()
                wake.clear()
                if self._held:
                    await self._confirm_once()
        finally:
            self._watching = False

    # -- bookkeeping for backends

    def _took(self, started: float) -> None:
        self._held = True
        self._term += 1
        self._suspect = False
        self._confirmed_at = started
        self._notify()

    def _let_go(self) -> bool:
        """Mark the lock released; returns whether it was held."""
        was_held, self._held = self._held, False
        self._term += 1
        self._notify()
        self._wake_event().set()  # wait_lost returns
        return was_held

    def _lose(self, why: str) -> None:
        if self._held:
            log.warning("the HA lock %s is no longer ours: %s", self.description, why)
            self._let_go()

    def _suspect_loss(self) -> None:
        """Something happened to the lock's session: serve nothing more until
        the next confirmation, and make it now."""
        self._suspect = True
        self._notify()
        self._wake_event().set()

    def _notify(self) -> None:
        """Wake whoever waits in :meth:`confirm`."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _wake_event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    async def _confirm_once(self) -> None:
        term, started = self._term, _now()
        check = self._checking = asyncio.ensure_future(self._check())
        check.add_done_callback(_consume)
        deadline = self._confirmed_at + self.lost_after
        timeout = None if math.isinf(deadline) else max(0.0, deadline - _now())
        done, _ = await asyncio.wait({check}, timeout=timeout)
        if term != self._term:  # released meanwhile
            return
        if not done:
            self._lose(f"not confirmed for {self.lost_after:g} s")
            self._abandon_check()
            return
        self._checking = None
        try:
            held = check.result()
        except OSError as error:
            log.warning("cannot confirm the HA lock %s: %s", self.description, error)
            held = None
        except Exception:
            log.exception("confirming the HA lock %s failed", self.description)
            held = False
        if held:
            self._confirmed_at = max(self._confirmed_at, started)
            self._suspect = False
            self._notify()
        elif held is False:
            self._lose("it was taken, released or its session ended")
        elif _now() >= self._confirmed_at + self.lost_after:
            self._lose(f"not confirmed for {self.lost_after:g} s")
        else:
            self._notify()  # a waiting confirm() re-checks the clock


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a background task's outcome so asyncio never reports it."""
    if not future.cancelled():
        future.exception()


# --------------------------------------------------------------------- file


class FileLock(LeaderLock):
    """An exclusive ``flock`` on a file, for replicas on one host.

    The lock dies with the process (the kernel drops it), so a killed leader
    is replaced at the next standby's attempt; a frozen one (SIGSTOP) keeps
    it until it thaws or is killed (systemd's ``WatchdogSec=`` kills it).
    Deleting or replacing the file counts as losing the lock. The file is
    opened read-only without following a symbolic link, and never written;
    its directory must be writable by this user only (or sticky and ours),
    since whoever can replace the file can make two replicas lead.
    """

    def __init__(self, path: str, *, check_interval: float = 0.25) -> None:
        super().__init__()
        self.path = path
        self.description = f"file://{path}"
        self.confirm_interval = check_interval
        self.settle_delay = 2 * check_interval
        self._fd: int | None = None
        directory = os.path.dirname(path) or "."
        if os.path.isdir(directory):  # else it may appear later (RuntimeDirectory=)
            _check_lock_directory(path)

    async def try_acquire(self) -> bool:
        _check_lock_directory(self.path)
        fd = _open_lock_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        started = _now()
        if not self._same_file(fd):  # replaced between open and flock: try again later
            os.close(fd)
            return False
        self._fd = fd
        self._took(started)
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path, follow_symlinks=False)
            held = os.fstat(fd)
        except OSError:
            return False
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    async def _check(self) -> bool:
        return self._fd is not None and self._same_file(self._fd)

    async def release(self) -> None:
        self._let_go()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _check_lock_directory(path: str) -> None:
    directory = os.path.dirname(path) or "."
    try:
        info = os.stat(directory)
    except OSError as error:
        raise OSError(f"cannot use the lock directory {directory}: {error.strerror}") from None
    me = os.geteuid()
    writable_by_others = bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)) or info.st_uid not in (
        me,
        0,
    )
    sticky_and_ours = bool(info.st_mode & stat.S_ISVTX) and info.st_uid == me
    if writable_by_others and not sticky_and_ours:
        raise ConfigError(
            f"--ha-lock file://{path}: the directory {directory} can be written by other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}), who could replace "
            "the lock file and make two replicas lead; use a directory only this user can write "
            "(with systemd: RuntimeDirectory=), or a sticky one this user owns"
        )


def _open_lock_file(path: str) -> int:
    # Read-only is enough for flock; O_NOFOLLOW refuses a symbolic link planted
    # at the path, O_NONBLOCK a FIFO that would block the open.
    flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ConfigError(
                f"--ha-lock file://{path} is a symbolic link; the lock file must be a plain file"
            ) from None
        raise OSError(f"cannot open the lock file {path}: {error.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "has other hard links" if stat.S_ISREG(info.st_mode) else "is not a plain file"
        raise ConfigError(f"--ha-lock file://{path} {what}; the lock file must be a plain file")
    return fd


# --------------------------------------------------------------- postgresql

_QUERY_TIMEOUT: Final = 5.0  # taking the lock, applying settings
_UNLOCK_TIMEOUT: Final = 2.0  # a clean hand-over; past it, closing frees the lock too


class PostgresLock(LeaderLock):
    """A session-level advisory lock on a dedicated PostgreSQL connection.

    The lock lives exactly as long as the session. A killed leader's lock is
    freed when the server sees its socket close; a session killed on the
    server (``pg_terminate_backend``, a restart) is noticed at once, because
    the leader watches the socket between its probes. So that a vanished
    leader (host lost, cut off, frozen) does not keep the lock for the
    server's TCP keepalive (over two hours by default), the session sets
    ``idle_session_timeout`` (PostgreSQL 14+: the leader's probes are the
    heartbeat), ``tcp_user_timeout`` (12+) and ``tcp_keepalives_*`` to
    ``lease_duration``. The lock key is derived from ``name`` (the URL's
    ``name`` query parameter, default ``default``), never from the API key:
    give each source's replica group its own name.
    """

    def __init__(
        self,
        conninfo: str,
        name: str,
        *,
        lease_duration: float = DEFAULT_LEASE_DURATION,
        probe_interval: float = 0.5,
        settle_delay: float = 2.0,
    ) -> None:
        super().__init__()
        if not probe_interval < settle_delay < lease_duration:
            raise ValueError("need probe_interval < settle_delay < lease_duration")
        self._conninfo = conninfo
        self.name = name
        self.key = int.from_bytes(
            hashlib.sha256(f"ablo-connector:{name}".encode()).digest()[:8], "big", signed=True
        )
        self.description = f"postgresql advisory lock {name!r}"
        self.lease_duration = lease_duration
        self.confirm_interval = probe_interval
        self.settle_delay = settle_delay
        self.lost_after = lease_duration * 2 / 3
        # A standby keeps its session between attempts; the leader's session
        # is the one that holds the lock.
        self._connection: Any = None
        self._backend_pid: int | None = None
        self._watched: int | None = None
        self._cleanup: set[asyncio.Task[None]] = set()
        self._warned_old_server = False

    def session_settings(self, server_version: int) -> dict[str, str]:
        """What the lock's session sets, so the server drops it T seconds after
        its client vanished (T = ``lease_duration``)."""
        timeout_ms = str(round(self.lease_duration * 1000))
        idle = max(1, int(self.lease_duration / 3))
        interval = max(1, int(self.lease_duration / 6))
        count = max(1, math.ceil((self.lease_duration - idle) / interval))
        settings = {
            "tcp_keepalives_idle": str(idle),
            "tcp_keepalives_interval": str(interval),
            "tcp_keepalives_count": str(count),
        }
        if server_version >= 120000:
            settings["tcp_user_timeout"] = timeout_ms
        if server_version >= 140000:
            settings["idle_session_timeout"] = timeout_ms
        return settings

    async def try_acquire(self) -> bool:
        kept = self._connection is not None and not self._connection.closed
        try:
            return await self._try_lock()
        except OSError:
            if not kept:
                raise
        # The session kept since the last attempt had ended (a server restart,
        # a standby frozen past its idle timeout): once more, on a new one.
        return await self._try_lock()

    async def _try_lock(self) -> bool:
        connection = self._connection
        if connection is None or connection.closed:
            connection = self._connection = await self._connect()
        started = _now()
        try:
            row = await self._query(
                connection, "SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (self.key,)
            )
        except OSError:
            self._connection = None
            raise
        if not row or not row[0]:
            return False
        self._backend_pid = row[1]
        self._took(started)
        self._watch()
        return True

    async def _connect(self) -> Any:
        import psycopg

        try:
            connection = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=5, keepalives=1,
                keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                application_name="ablo-connector-ha",
            )  # fmt: skip
        except psycopg.Error as error:
            raise OSError(f"cannot connect to PostgreSQL: {describe_error(error)}") from None
        version = connection.info.server_version
        settings = self.session_settings(version)
        if "idle_session_timeout" not in settings and not self._warned_old_server:
            self._warned_old_server = True
            log.warning(
                "PostgreSQL %d.%d has no idle_session_timeout: a leader cut off behind a proxy "
                "or pooler keeps the HA lock until that drops its server connection",
                version // 10000, version % 10000 // 100,
            )  # fmt: skip
        calls = ", ".join("set_config(%s, %s, false)" for _ in settings)
        params = tuple(item for pair in settings.items() for item in pair)
        try:
            await self._query(connection, f"SELECT {calls}", params)
        except OSError:
            raise OSError("cannot configure the HA lock's PostgreSQL session") from None
        return connection

    async def _query(
        self, connection: Any, sql: str, params: tuple[Any, ...], timeout: float = _QUERY_TIMEOUT
    ) -> Any:
        """One row, within ``timeout``; on timeout the socket is shut, never cancelled
        (psycopg's cancel request can itself hang for seconds on a dead network)."""
        import psycopg

        async def run() -> Any:
            cursor = await connection.execute(sql, params)
            return await cursor.fetchone()

        task = asyncio.ensure_future(run())
        task.add_done_callback(_consume)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            self._discard(connection, task)
            raise OSError(f"PostgreSQL did not answer within {timeout:g} s")
        try:
            return task.result()
        except psycopg.Error as error:
            self._discard(connection)
            raise OSError(describe_error(error)) from None

    async def _check(self) -> bool:
        import psycopg

        connection = self._connection
        if connection is None:
            return False
        self._unwatch()  # the probe's own answer must not look like a closing session
        try:
            cursor = await connection.execute("SELECT pg_backend_pid()")
            row = await cursor.fetchone()
        except psycopg.Error as error:
            log.warning(
                "the PostgreSQL session holding the HA lock %r failed: %s",
                self.name,
                describe_error(error),
            )
            return False
        if not row or row[0] != self._backend_pid:
            log.error(
                "the HA lock's connection reached another PostgreSQL session (a pooler in "
                "transaction mode?): a session advisory lock needs a direct or session-pooled "
                "connection"
            )
            return False
        self._watch()
        return True

    def _abandon_check(self) -> None:
        if self._connection is not None:
            _shut(self._connection)

    # -- watching the lock's socket between probes: the server's FATAL and
    # FIN arrive at once when the session is killed or the server stops.

    def _watch(self) -> None:
        if self._watched is None and self._connection is not None and self._held:
            with contextlib.suppress(Exception):
                fd = self._connection.fileno()
                asyncio.get_running_loop().add_reader(fd, self._on_readable)
                self._watched = fd

    def _unwatch(self) -> None:
        fd, self._watched = self._watched, None
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)

    def _on_readable(self) -> None:
        self._unwatch()
        self._suspect_loss()  # the probe it triggers tells a notice from a closed session

    async def release(self) -> None:
        was_held = self._let_go()
        self._unwatch()
        connection, self._connection = self._connection, None
        checking, self._checking = self._checking, None
        if connection is None:
            return
        pending = checking if checking is not None and not checking.done() else None
        if was_held and pending is None:
            try:
                await self._query(
                    connection, "SELECT pg_advisory_unlock(%s)", (self.key,), _UNLOCK_TIMEOUT
                )
            except OSError:
                return  # _query has discarded the connection
        self._discard(connection, pending)

    def _discard(self, connection: Any, pending: asyncio.Future[Any] | None = None) -> None:
        """Close ``connection`` in the background (which ends the session, and
        any lock with it); if a query on it still waits, shut its socket first
        so that nothing waits on a network that may be gone."""
        if pending is not None and not pending.done():
            _shut(connection)

        async def close() -> None:
            if pending is not None and not pending.done():
                await asyncio.wait({pending}, timeout=_QUERY_TIMEOUT)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), _QUERY_TIMEOUT)

        task = asyncio.ensure_future(close())
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)


def _shut(connection: Any) -> None:
    """Shut the connection's socket down: pending reads end at once, without
    waiting on a network that may be gone."""
    with contextlib.suppress(Exception):
        sock = socket.socket(fileno=os.dup(connection.fileno()))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


# --------------------------------------------------------------------- urls


def lock_from_url(url: str, *, lease_duration: float = DEFAULT_LEASE_DURATION) -> LeaderLock:
    """The lock backend a ``--ha-lock`` URL names; ValueError if unknown.

    ``lease_duration`` is how long a vanished leader keeps the lock (see the
    module's docstring); the file lock has no use for it.
    """
    if not lease_duration >= MIN_LEASE_DURATION:
        raise ValueError(f"the HA lease duration must be at least {MIN_LEASE_DURATION:g} s")
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        query = parse_qsl(parts.query, keep_blank_values=True)
        name = next((value for key, value in query if key == "name"), "default") or "default"
        rest = urlencode([(key, value) for key, value in query if key != "name"])
        return PostgresLock(
            urlunsplit(parts._replace(query=rest)), name, lease_duration=lease_duration
        )
    if parts.scheme in ("mysql", "mariadb"):
        from .ha_mysql import mysql_lock_from_url

        return mysql_lock_from_url(parts, lease_duration=lease_duration)
    if parts.scheme == "k8s":
        segments = [unquote(p) for p in (parts.netloc + parts.path).split("/") if p]
        if len(segments) not in (1, 2):
            raise ValueError(
                f"--ha-lock {url!r}: use k8s://namespace/lease-name (or k8s:///lease-name)"
            )
        namespace, name = (None, segments[0]) if len(segments) == 1 else (segments[0], segments[1])
        api = os.environ.get("ABLO_K8S_API_URL")  # tests and out-of-cluster use
        if api:
            return LeaseLock(
                api,
                namespace or "default",
                name,
                token=os.environ.get("ABLO_K8S_TOKEN"),
                lease_duration=lease_duration,
            )
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            # Fail at start, not at the first lock attempt: outside a pod no
            # retry can ever succeed.
            raise ValueError(
                f"--ha-lock {url!r}: k8s:// locks run in a Kubernetes pod (KUBERNETES_SERVICE_HOST "
                "is not set); outside one use postgresql:// or file://"
            )
        return _InClusterLease(namespace, name, lease_duration=lease_duration)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if not path or parts.netloc not in ("", "localhost"):
            raise ValueError(f"--ha-lock {url!r}: use file:///absolute/path")
        return FileLock(path)
    raise ValueError(
        f"--ha-lock {url!r}: unsupported scheme {parts.scheme!r} "
        "(supported: file://, postgresql://, mysql://, k8s://)"
    )


# --------------------------------------------------------------- kubernetes


class LeaseLock(LeaderLock):
    """A Kubernetes ``coordination.k8s.io/v1`` Lease, as client-go's leader
    election uses it: take the lease when it is free or expired, renew it
    every ``retry_period``, count it lost when it could not be renewed within
    ``renew_deadline``. A lease counts as expired when this replica has seen
    it unchanged for ``leaseDurationSeconds`` on its own clock, never by
    comparing the holder's timestamps with this host's wall clock (so clock
    skew between hosts cannot make two leaders). Plain HTTPS to the API
    server with the pod's service account; no client library.
    """

    def __init__(
        self,
        api_url: str,
        namespace: str,
        name: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        identity: str | None = None,
        lease_duration: float = DEFAULT_LEASE_DURATION,
        renew_deadline: float | None = None,
        retry_period: float | None = None,
    ) -> None:
        super().__init__()
        # client-go's defaults are 15 s, 10 s and 2 s: keep their proportions.
        renew_deadline = lease_duration * 2 / 3 if renew_deadline is None else renew_deadline
        retry_period = lease_duration * 2 / 15 if retry_period is None else retry_period
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")
        self._api = api_url.rstrip("/")
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self._token = token
        self._ssl = ssl_context
        self.identity = identity or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.confirm_interval = retry_period
        self.lost_after = renew_deadline
        self.settle_delay = 2 * retry_period
        self.description = f"Kubernetes lease {namespace}/{name}"
        self._lease: dict[str, Any] | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    # -- HTTP, in a worker thread so the event loop never blocks

    def _resolve(self) -> None:
        """Find the API server and credentials (in a pod: on first use)."""

    def _request_sync(
        self, method: str, body: dict[str, Any] | None, collection: bool
    ) -> tuple[int, Any]:
        self._resolve()
        path = self._path.rsplit("/", 1)[0] if collection else self._path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(
            self._api + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=self._ssl) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, None
        except (urllib.error.URLError, TimeoutError, ValueError) as error:
            raise OSError(f"Kubernetes API unreachable: {error}") from None

    async def _request(
        self, method: str, body: dict[str, Any] | None = None, *, collection: bool = False
    ) -> tuple[int, Any]:
        return await asyncio.to_thread(self._request_sync, method, body, collection)

    # -- lease logic

    def _observe(self, spec: dict[str, Any]) -> None:
        """Note when this replica first saw the lease as it is now."""
        record = tuple(
            spec.get(field)
            for field in (
                "holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime",
                "leaseTransitions",
            )
        )  # fmt: skip
        if record != self._observed:
            self._observed, self._observed_at = record, _now()

    def _expired(self, spec: dict[str, Any]) -> bool:
        try:
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        except (TypeError, ValueError):
            duration = self.lease_duration
        return _now() - self._observed_at >= duration

    def _spec(self, *, acquire: bool, transitions: int) -> dict[str, Any]:
        now = _micro_time()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        spec["acquireTime"] = (
            now if acquire else (self._lease or {}).get("spec", {}).get("acquireTime", now)
        )
        return spec

    async def try_acquire(self) -> bool:
        started = _now()
        status, lease = await self._request("GET")
        if status == 404:
            name = self._path.rsplit("/", 1)[1]
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
                    "spec": self._spec(acquire=True, transitions=0)}  # fmt: skip
            status, created = await self._request("POST", body, collection=True)
            return self._took_lease(status, created, started)
        if status != 200 or not isinstance(lease, dict):
            raise OSError(f"reading the lease failed: HTTP {status}")
        spec = lease.get("spec") or {}
        self._observe(spec)
        holder = spec.get("holderIdentity")
        if holder and holder != self.identity and not self._expired(spec):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        self._lease = lease
        lease = dict(
            lease, spec=self._spec(acquire=holder != self.identity, transitions=transitions)
        )
        status, updated = await self._request("PUT", lease)  # carries resourceVersion
        return self._took_lease(status, updated, started)

    def _took_lease(self, status: int, lease: Any, started: float) -> bool:
        if status in (200, 201) and isinstance(lease, dict):
            self._lease = lease
            self._observe(lease.get("spec") or {})
            self._took(started)
            return True
        self._lease = None
        if status == 409:  # another replica won the race
            return False
        raise OSError(f"writing the lease failed: HTTP {status}")

    async def _check(self) -> bool | None:
        lease = self._lease
        if lease is None:
            return False
        spec = lease.get("spec") or {}
        renewed = dict(
            lease, spec=dict(spec, renewTime=_micro_time(), holderIdentity=self.identity)
        )
        status, updated = await self._request("PUT", renewed)
        if status == 200 and isinstance(updated, dict):
            self._lease = updated
            self._observe(updated.get("spec") or {})
            return True
        log.warning("renewing %s failed: HTTP %s", self.description, status)
        if status in (404, 409):  # deleted, or written by someone else: not ours any more
            self._lease = None
            return False
        return None

    async def release(self) -> None:
        lease, self._lease = self._lease, None
        if not self._let_go() or lease is None:
            return
        spec = dict(lease.get("spec") or {}, holderIdentity="", leaseDurationSeconds=1)
        with contextlib.suppress(OSError):
            await self._request("PUT", dict(lease, spec=spec))


class _InClusterLease(LeaseLock):
    """A Lease whose in-cluster credentials (service account token, CA,
    namespace) are read when first used, so they can rotate."""

    _account = "/var/run/secrets/kubernetes.io/serviceaccount"

    def __init__(self, namespace: str | None, name: str, **timing: Any) -> None:
        super().__init__("", namespace or "", name, **timing)
        self._namespace, self._name = namespace, name
        self.description = f"Kubernetes lease {namespace or '(pod namespace)'}/{name}"
        self._resolved = False

    def _resolve(self) -> None:
        if self._resolved:
            return
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise OSError("k8s:// locks need to run in a pod (KUBERNETES_SERVICE_HOST is not set)")
        with open(f"{self._account}/token", encoding="utf-8") as handle:
            self._token = handle.read().strip()
        namespace = self._namespace
        if namespace is None:
            with open(f"{self._account}/namespace", encoding="utf-8") as handle:
                namespace = handle.read().strip()
        self._ssl = ssl.create_default_context(cafile=f"{self._account}/ca.crt")
        host = f"[{host}]" if ":" in host else host
        self._api = f"https://{host}:{port}"
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{self._name}"
        self._resolved = True


def _micro_time(when: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if when is None else when, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
