"""The ``mysql://`` (and ``mariadb://``) leader lock: ``GET_LOCK`` on a dedicated session.

The fence and its argument are :mod:`connector.daemon.ha`'s, unchanged: this
module only supplies a lock whose confirmation proves ownership at an instant
after it started, and a server that frees the lock of a vanished leader within
``lease_duration`` (T).

Why it gives the PostgreSQL lock's guarantees
---------------------------------------------

- *Ownership, on every probe.* ``GET_LOCK`` belongs to the session that took
  it. A probe asks, in one statement on the lock's session,
  ``IS_USED_LOCK(name)``, ``CONNECTION_ID()`` and a random token set on that
  session when it was opened; it confirms only if the holder is this session,
  the session is the one that took the lock, and the token is ours. A
  connection that silently reached another session (a pooler multiplexing
  sessions, a driver reconnecting, a server restart reusing connection ids)
  fails the probe instead of confirming someone else's lock.
- *No re-entry.* ``GET_LOCK`` is re-entrant on MySQL 5.7+ and MariaDB 10.0.2+:
  a session that already holds the name gets it again and must release it
  twice. The lock is taken with ``IF(IS_FREE_LOCK(name), GET_LOCK(name, 0),
  0)``, one statement, so a session that already holds it (however it came
  to) never counts as having just won it. The timeout is 0 (try once) on both
  servers; a negative one means "forever" on MySQL and an error on MariaDB.
- *A vanished leader's lock is free within T.* The session sets
  ``wait_timeout`` (the server closes a session that sends no command for that
  many seconds, which frees its locks), ``net_read_timeout`` and
  ``net_write_timeout`` to T, whole seconds rounded down. The leader's probes
  (every 0.5 s) are the session's heartbeat, so only a leader that is dead,
  cut off or frozen goes silent; the server then drops it after at most T,
  whatever happens to its TCP connection, through any plain TCP proxy. The
  values are read back, and a server that does not keep them is refused.
- *A lock on one server only.* ``GET_LOCK`` is not replicated: on a Galera
  node (``wsrep_on=ON``) two replicas reaching two nodes would both win, so
  such a server is refused (:class:`~connector.errors.ConfigError`, exit 78).
  Replicas must reach one server, not members of a cluster or replicas of it.

The leader notices a killed session at its next probe (0.5 s); unlike the
PostgreSQL lock, the socket is not watched between probes, since the driver
owns it through an asyncio transport.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import secrets
import ssl
from typing import Any, Final
from urllib.parse import SplitResult, parse_qsl, unquote

from ..errors import ConfigError, describe_error
from .ha import DEFAULT_LEASE_DURATION, LeaderLock, _consume, _now

__all__ = ["MAX_LOCK_NAME", "MySQLLock", "mysql_lock_from_url"]

log = logging.getLogger("connector.ha")

#: ``GET_LOCK`` names longer than this are an error on MySQL 5.7+ (3057);
#: MariaDB takes longer ones, but one rule for both keeps a URL portable.
MAX_LOCK_NAME: Final = 64
_NAME_PREFIX: Final = "ablo-connector:"

_QUERY_TIMEOUT: Final = 5.0  # connecting, setting the session up, taking the lock
_UNLOCK_TIMEOUT: Final = 2.0  # a clean hand-over; past it, closing frees the lock too

_URL_PARAMETERS: Final = ("name", "ssl", "ssl_ca", "unix_socket")


class MySQLLock(LeaderLock):
    """A ``GET_LOCK`` user lock on a dedicated MySQL 8 or MariaDB session.

    The lock name is ``ablo-connector:`` followed by ``name`` (the URL's
    ``name`` query parameter, default ``default``): give each source's
    replica group its own name. See the module's docstring for why it fences
    like the PostgreSQL lock.
    """

    def __init__(
        self,
        connect_args: dict[str, Any],
        name: str,
        *,
        lease_duration: float = DEFAULT_LEASE_DURATION,
        probe_interval: float = 0.5,
        settle_delay: float = 2.0,
    ) -> None:
        super().__init__()
        if not probe_interval < settle_delay < lease_duration:
            raise ValueError("need probe_interval < settle_delay < lease_duration")
        lock_name = _NAME_PREFIX + name
        if len(lock_name) > MAX_LOCK_NAME:
            raise ValueError(
                f"the lock name {name[:20]!r}… is {len(name)} characters; MySQL allows "
                f"{MAX_LOCK_NAME} for a GET_LOCK name, so at most "
                f"{MAX_LOCK_NAME - len(_NAME_PREFIX)} for name="
            )
        self._connect_args = connect_args
        self.name = name
        self.lock_name = lock_name
        self.description = f"mysql lock {name!r}"
        self.lease_duration = lease_duration
        self.confirm_interval = probe_interval
        self.settle_delay = settle_delay
        self.lost_after = lease_duration * 2 / 3
        # A standby keeps its session between attempts; the leader's session
        # is the one that holds the lock.
        self._connection: Any = None
        self._token = ""
        self._connection_id: int | None = None

    def __repr__(self) -> str:
        return f"MySQLLock({self.name!r}, lease_duration={self.lease_duration:g})"

    def session_settings(self) -> dict[str, int]:
        """What the lock's session sets, so the server drops it at most T
        seconds after its last command (whole seconds, never above T)."""
        seconds = max(1, int(self.lease_duration))
        return {"wait_timeout": seconds, "net_read_timeout": seconds, "net_write_timeout": seconds}

    async def try_acquire(self) -> bool:
        kept = self._connection is not None and self._connection.connected
        try:
            return await self._try_lock()
        except OSError:
            if not kept:
                raise
        # The session kept since the last attempt had ended (a server restart,
        # a standby frozen past wait_timeout): once more, on a new one.
        return await self._try_lock()

    async def _try_lock(self) -> bool:
        connection = self._connection
        if connection is None or not connection.connected:
            self._connection = None
            connection = self._connection = await self._connect()
        started = _now()
        try:
            row = await self._query(
                connection,
                "SELECT IF(IS_FREE_LOCK(%s), GET_LOCK(%s, 0), 0), CONNECTION_ID()",
                (self.lock_name, self.lock_name),
            )
        except OSError:
            self._connection = None
            raise
        if not row or row[0] != 1:
            return False
        self._connection_id = int(row[1])
        self._took(started)
        return True

    async def _connect(self) -> Any:
        import asyncmy

        try:
            # Not wait_for: on Python 3.11 it drops a cancellation that lands as
            # the connection opens, and a stopped replica would go on to lead.
            async with asyncio.timeout(_QUERY_TIMEOUT + 1):
                connection = await asyncmy.connect(
                    **self._connect_args, connect_timeout=5, autocommit=True
                )
        except TimeoutError:
            raise OSError("cannot connect to MySQL: no answer within 6 s") from None
        except asyncmy.Error as error:
            raise OSError(f"cannot connect to MySQL: {_describe(error)}") from None
        try:
            await self._set_up(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    async def _set_up(self, connection: Any) -> None:
        wanted = self.session_settings()
        token = secrets.token_hex(16)
        assignments = ", ".join(f"{name} = %s" for name in wanted)
        await self._query(
            connection,
            f"SET SESSION {assignments}, @ablo_connector_lock = %s",
            (*wanted.values(), token),
        )
        names = ", ".join(f"@@session.{name}" for name in wanted)
        row = await self._query(connection, f"SELECT {names}, @ablo_connector_lock", ())
        kept = dict(zip(wanted, row or (), strict=False))
        if kept != wanted or not row or row[-1] != token:
            raise ConfigError(
                f"--ha-lock: the MySQL server did not keep the HA lock's session settings "
                f"(asked {wanted}, got {kept}; a proxy between?): without them a vanished "
                "leader could keep the lock indefinitely"
            )
        galera = await self._query(connection, "SHOW VARIABLES LIKE 'wsrep_on'", ())
        if galera and str(galera[1]).upper() == "ON":
            raise ConfigError(
                "--ha-lock: the MySQL server is a Galera cluster node (wsrep_on=ON); GET_LOCK "
                "locks on one node only, so replicas reaching two nodes would both lead. Point "
                "--ha-lock at one server that is not in a Galera cluster, or use another backend"
            )
        self._token = token

    async def _query(
        self, connection: Any, sql: str, params: tuple[Any, ...], timeout: float = _QUERY_TIMEOUT
    ) -> Any:
        """One row, within ``timeout``; on timeout or error the connection is closed
        (cancelling the driver's read closes it too)."""
        import asyncmy

        task = asyncio.ensure_future(_fetch_one(connection, sql, params))
        task.add_done_callback(_consume)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            connection.close()
            raise OSError(f"MySQL did not answer within {timeout:g} s")
        try:
            return task.result()
        except asyncmy.Error as error:
            connection.close()
            raise OSError(_describe(error)) from None

    async def _check(self) -> bool:
        import asyncmy

        connection = self._connection
        if connection is None:
            return False
        try:
            row = await _fetch_one(
                connection,
                "SELECT IS_USED_LOCK(%s), CONNECTION_ID(), @ablo_connector_lock",
                (self.lock_name,),
            )
        except asyncmy.Error as error:
            log.warning(
                "the MySQL session holding the HA lock %r failed: %s", self.name, _describe(error)
            )
            return False
        if not row:
            return False
        holder, session, token = row
        if session != self._connection_id or token != self._token:
            log.error(
                "the HA lock's connection reached another MySQL session (a pooler or proxy "
                "multiplexing sessions?): a GET_LOCK lock needs a direct connection"
            )
            return False
        return bool(holder == session)

    def _abandon_check(self) -> None:
        checking = self._checking
        if checking is not None and not checking.done():
            checking.cancel()  # the driver closes a connection whose read was cancelled
        if self._connection is not None:
            self._connection.close()

    async def release(self) -> None:
        was_held = self._let_go()
        connection, self._connection = self._connection, None
        checking, self._checking = self._checking, None
        if connection is None:
            return
        if checking is not None and not checking.done():
            # A probe still waits on this session (a network that may be gone):
            # no RELEASE_LOCK beside it; closing the session frees the lock.
            checking.cancel()
            connection.close()
            return
        if was_held and connection.connected:
            try:
                await self._query(
                    connection, "SELECT RELEASE_LOCK(%s)", (self.lock_name,), _UNLOCK_TIMEOUT
                )
            except OSError:
                return  # _query has closed the connection, which frees the lock
        await _quit(connection)


async def _fetch_one(connection: Any, sql: str, params: tuple[Any, ...]) -> Any:
    async with connection.cursor() as cursor:
        await cursor.execute(sql, params or None)
        return await cursor.fetchone()


async def _quit(connection: Any) -> None:
    """End the session politely (the server logs no aborted connection), or just close it."""
    try:
        await asyncio.wait_for(connection.ensure_closed(), _UNLOCK_TIMEOUT)
    except Exception:
        connection.close()


def _describe(error: BaseException) -> str:
    """asyncmy's errors are ``(errno, message)``: one line, the number kept."""
    args: tuple[Any, ...] = error.args
    if len(args) == 2 and isinstance(args[0], int):
        return f"{describe_error(str(args[1]))} ({args[0]})"
    return describe_error(error)


# --------------------------------------------------------------------- urls


def mysql_lock_from_url(parts: SplitResult, *, lease_duration: float) -> MySQLLock:
    """A :class:`MySQLLock` from ``mysql://user:password@host:port/db?name=…``.

    Query parameters: ``name`` (the lock's name), ``ssl=true`` (TLS, the
    server's certificate and host name verified), ``ssl_ca=/path`` (the CA to
    verify it with; implies ``ssl=true``), ``unix_socket=/path``. Others are
    refused rather than ignored. ValueError on a bad URL; its message never
    holds the password.
    """
    if importlib.util.find_spec("asyncmy") is None:
        raise ValueError(
            "--ha-lock mysql:// needs the MySQL driver: pip install 'ablo-connector[mysql]'"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    unknown = sorted({key for key, _ in query if key not in _URL_PARAMETERS})
    if unknown:
        raise ValueError(
            f"--ha-lock {parts.scheme}://: unknown parameter(s) {', '.join(unknown)} "
            f"(known: {', '.join(_URL_PARAMETERS)})"
        )
    options = dict(query)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"--ha-lock {parts.scheme}://: the port is not a number") from None
    args: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": port or 3306,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else "",
        "database": unquote(parts.path.lstrip("/")) or None,
    }
    if options.get("unix_socket"):
        args["unix_socket"] = options["unix_socket"]
    use_ssl = options.get("ssl", "").lower()
    if use_ssl not in ("", "true", "false"):
        raise ValueError(f"--ha-lock {parts.scheme}://: ssl= takes true or false")
    if use_ssl == "true" or options.get("ssl_ca"):
        try:
            args["ssl"] = ssl.create_default_context(cafile=options.get("ssl_ca") or None)
        except OSError as error:
            raise ValueError(
                f"--ha-lock {parts.scheme}://: cannot read ssl_ca: {error.strerror}"
            ) from None
    name = options.get("name") or "default"
    return MySQLLock(args, name, lease_duration=lease_duration)
