"""MySQL 8 and MariaDB 10.6+, through asyncmy, on the event loop.

- URL: ``mysql://user:…@host/dbname`` or ``mariadb://…`` (then SQLAlchemy
  also checks the server is MariaDB). asyncmy serves requests (the
  ``[mysql]`` extra; ``bench/mysql_drivers.py`` measured it against
  aiomysql, PyMySQL and mysqlclient); asyncmy has no synchronous API, so
  ``migrate``, ``check``, the reflection at start and scripts use PyMySQL,
  whose errors and conversions asyncmy shares (it is a port of it).
- Every connection talks ``utf8mb4`` and sets its session as the adapter
  relies on (:func:`_session_statements`): a strict ``sql_mode`` (a value
  that does not fit is refused, never truncated; no zero dates),
  ``time_zone = '+00:00'`` (``TIMESTAMP`` values are UTC, as ``DATETIME``
  values are taken to be), and the statement timeout. A URL's own
  ``init_command`` runs after those, so a setting of the user's wins, as a
  libpq ``options`` does on PostgreSQL; its own ``sql_mode`` parameter
  replaces the adapter's. Reads run on connections of their own, in
  autocommit; commits on others, in READ COMMITTED (see .mysql_commits).
- MySQL's default collations compare case- and accent-insensitively
  (MariaDB's ``utf8mb4_general_ci``, MySQL 8's ``utf8mb4_0900_ai_ci``):
  ``LIKE`` compares under ``utf8mb4_bin`` to stay case-sensitive, and
  ``ILIKE`` is ``LOWER(c) LIKE LOWER(v)`` under it (accent-sensitive, as on
  PostgreSQL). Equality and order follow the column's collation.
- No ``ON CONFLICT … RETURNING``: the ledger reservation is a plain
  ``INSERT``, and a duplicate key (1062) means another commit holds the key:
  InnoDB makes the second ``INSERT`` wait until the first commits, and
  undoes only the failed statement. ``INSERT IGNORE`` would turn every
  error into a warning, truncating values.
- ``AUTO_INCREMENT`` draws outbox cursors at insert time, as a sequence
  does: commits write their events under a named lock (``GET_LOCK``, one
  per database), held until after ``COMMIT``. The lock belongs to the
  session, so a connection that dies frees it; one that cannot release it
  is closed. No WAL echo (409, as on SQLite).
- Capture (``migrate --capture``): the triggers run at statement time, so
  they stage each change in ``ablo_capture_pending`` instead of drawing an
  outbox cursor, and the connector moves the committed staged rows into the
  outbox under that lock, before each events page and at each probe (the
  argument is written above the capture DDL, in :class:`MySQL`).
- Errors carry a number (errno): one table says which are the caller's
  mistake, a timeout or a retry. MySQL's messages quote the rejected value,
  so answers are worded from the table and the column or key the message
  names, never from the message.

MySQL 8 and MariaDB differ, and where the adapter must know it says so here:
MariaDB names its statement timeout ``max_statement_time`` (seconds, every
statement), MySQL ``max_execution_time`` (milliseconds, ``SELECT`` only;
the lock waits below bound the rest); MySQL caches
``information_schema.TABLES.AUTO_INCREMENT`` unless
``information_schema_stats_expiry`` is 0; MariaDB's ``JSON`` is ``LONGTEXT``
with a ``json_valid`` check (reflected as JSON here), MySQL's a type of its
own; MariaDB has ``INSERT``/``DELETE … RETURNING`` (10.5+), MySQL none
(the row is read back in the same transaction). These tests run on
MariaDB; what is said of MySQL 8 is from its manual.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ....errors import ConfigError, SourceError, describe_error
from ..capture import (
    CAPTURE_TABLE,
    STAGING_TABLE,
    CaptureSpec,
    CommitContext,
    capture_installed,
)
from ..connections import ReadConnections
from ..execution import Database, LoopDatabase, PageShapes, Serving
from ..models import ServedModel
from ..tables import HIGHEST_CURSOR, LEDGER_TABLE, OUTBOX_TABLE, ledger
from ..values import json_text
from . import Dialect, text_literal
from .mysql_commits import MySQLCommits

__all__ = ["MySQL"]

log = logging.getLogger("connector.sql")

T = TypeVar("T")

# What every session runs with: a value that does not fit its column is an
# error (400), never truncated or stored as a zero date.
_SQL_MODE: Final = (
    "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION"
)
_STRICT_MODES: Final = frozenset({"STRICT_TRANS_TABLES", "STRICT_ALL_TABLES"})
_OLDEST: Final = {"MariaDB": (10, 6), "MySQL": (8, 0)}
# The collation a case- and accent-sensitive comparison uses.
_EXACT: Final = "utf8mb4_bin"

# The outbox's commit-order lock: named per database (GET_LOCK names are
# server-wide, at most 64 characters), waited for at most this long.
_LOCK_NAME: Final = "LEFT(CONCAT('ablo_outbox.', DATABASE()), 64)"
_LOCK_WAIT_SECONDS: Final = 30
_LOCKED: Final = "ablo_commit_order_locked"  # Connection.info: this session holds it

# ------------------------------------------------------------ the DDL migrate writes

# Keys compare byte for byte (utf8mb4_bin): correlation ids "a" and "A" are
# two commits. Timestamps are UTC (every session's time_zone).
_TABLE_OPTIONS: Final = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
_CREATE: Final = (
    f"""CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
  client_tx_id VARCHAR(255) NOT NULL PRIMARY KEY,
  response     JSON NOT NULL,
  request_hash TEXT,
  expires_at   DATETIME(6) NOT NULL DEFAULT '9999-12-31 23:59:59.999999',
  created_at   DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (
  `cursor`        BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  id              VARCHAR(320) NOT NULL UNIQUE,
  model           TEXT NOT NULL,
  entity_id       TEXT NOT NULL,
  type            TEXT NOT NULL,
  data            JSON,
  organization_id TEXT,
  client_tx_id    TEXT,
  correlation_id  TEXT,
  transaction_id  TEXT,
  occurred_at     BIGINT,
  created_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) {_TABLE_OPTIONS}""",
)

# A ledger row written before expires_at existed never expires.
_UPGRADES: Final = {
    (LEDGER_TABLE, "request_hash"): "TEXT",
    (LEDGER_TABLE, "expires_at"): "DATETIME(6) NOT NULL DEFAULT '9999-12-31 23:59:59.999999'",
    (LEDGER_TABLE, "created_at"): "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
    (OUTBOX_TABLE, "data"): "JSON",
    (OUTBOX_TABLE, "organization_id"): "TEXT",
    (OUTBOX_TABLE, "client_tx_id"): "TEXT",
    (OUTBOX_TABLE, "correlation_id"): "TEXT",
    (OUTBOX_TABLE, "transaction_id"): "TEXT",
    (OUTBOX_TABLE, "occurred_at"): "BIGINT",
    (OUTBOX_TABLE, "created_at"): "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
}

# The next cursor AUTO_INCREMENT will draw, less one: InnoDB keeps the
# counter across restarts (MySQL 8, MariaDB 10.2.4+) and DELETE does not
# rewind it; TRUNCATE does.
_TABLES: Final = sa.table(
    "TABLES",
    sa.column("TABLE_SCHEMA"),
    sa.column("TABLE_NAME"),
    sa.column("AUTO_INCREMENT"),
    schema="information_schema",
)
_LAST_ISSUED_CURSOR: Final = sa.select(
    sa.func.greatest(
        sa.func.coalesce(HIGHEST_CURSOR, 0),
        sa.func.coalesce(
            sa.select(_TABLES.c.AUTO_INCREMENT - 1)
            .where(sa.func.database() == _TABLES.c.TABLE_SCHEMA)
            .where(_TABLES.c.TABLE_NAME == OUTBOX_TABLE)
            .scalar_subquery(),
            0,
        ),
    )
)

# What the connector does to each table, and so the least it needs.
_SERVED_PRIVILEGES: Final = "SELECT, INSERT, UPDATE, DELETE"
# DELETE: retention prunes both (see SQLSource.prune).
_LEDGER_PRIVILEGES: Final = "SELECT, INSERT, UPDATE, DELETE"
_OUTBOX_PRIVILEGES: Final = "SELECT, INSERT, DELETE"

# ------------------------------------------------------------ the driver's errors

_DUPLICATE_KEY: Final = 1062
_NO_SUCH_TABLE: Final = 1146
# errno → (code, status, what the answer says was refused).
_REFUSED: Final[dict[int, tuple[str, int, str]]] = {
    1062: ("source_constraint_violation", 409, "a duplicate key"),
    1586: ("source_constraint_violation", 409, "a duplicate key"),
    1451: ("source_constraint_violation", 409, "a foreign key (the row is still referenced)"),
    1452: ("source_constraint_violation", 409, "a foreign key"),
    1048: ("source_constraint_violation", 409, "a NOT NULL column"),
    1364: ("source_constraint_violation", 409, "a NOT NULL column without a default"),
    3819: ("source_constraint_violation", 409, "a CHECK constraint"),  # MySQL
    4025: ("source_constraint_violation", 409, "a CHECK constraint"),  # MariaDB
    1406: ("source_value_invalid", 400, "a value too long for its column"),
    1264: ("source_value_invalid", 400, "a value out of its column's range"),
    1690: ("source_value_invalid", 400, "a value out of range"),
    1366: ("source_value_invalid", 400, "a value its column's type cannot take"),
    1292: ("source_value_invalid", 400, "a date, time or number its column cannot take"),
    1265: ("source_value_invalid", 400, "a value that does not fit its column"),
    1365: ("source_value_invalid", 400, "a division by zero"),
    3140: ("source_value_invalid", 400, "a value that is not valid JSON"),  # MySQL
    1267: ("source_value_invalid", 400, "text its column's character set cannot compare"),
    1271: ("source_value_invalid", 400, "text its column's character set cannot compare"),
    1118: ("source_value_invalid", 400, "a row too large for the table"),
    1142: ("source_query_invalid", 400, "an operation the connector's user may not run"),
    1143: ("source_query_invalid", 400, "a column the connector's user may not use"),
    1213: ("source_commit_retry", 503, "a deadlock with a concurrent commit"),
}
# A statement stopped by the server's statement timeout (MariaDB's
# max_statement_time, MySQL's max_execution_time) or a lock wait past it.
_TIMED_OUT: Final = frozenset({1969, 3024, 1205})
# A statement naming a column or table a migration removed; one prepared
# before a change that the server could not prepare again.
_GONE: Final = frozenset({1054, 1146, 1615})
_LACKS_PRIVILEGE: Final = frozenset({1142, 1044, 1227})
# The session is gone: the server went away, dropped or killed it.
_LOST: Final = frozenset({1927, 2006, 2013, 2055, 4031})
# Where a message names the column or key it is about (the value it quotes
# is never taken).
_COLUMN: Final = (
    re.compile(r"for column `[^`]*`\.`[^`]*`\.`([^`]+)`"),  # MariaDB: `db`.`table`.`column`
    re.compile(r"for column '([^']+)'"),
    re.compile(r"^Column '([^']+)' cannot be null"),
    re.compile(r"^Field '([^']+)' doesn't have a default value"),
)
_KEY: Final = re.compile(r"for key '([^']+)'$")
_CONSTRAINT: Final = re.compile(r"CONSTRAINT `([^`]+)`|[Cc]onstraint '([^']+)'")
_JSON_CHECK: Final = re.compile(r"json_valid\(`((?:[^`]|``)+)`\)")
_CHECKS: Final = sa.text(
    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
    "WHERE CONSTRAINT_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
)


def _errno(original: BaseException | None) -> int | None:
    """The error number MySQL's drivers put first in an error's arguments."""
    args: tuple[Any, ...] = getattr(original, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _message(original: BaseException | None) -> str:
    args: tuple[Any, ...] = getattr(original, "args", ())
    return args[1] if len(args) > 1 and isinstance(args[1], str) else ""


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(
            f"MySQL and MariaDB need {module}: pip install 'ablo-connector[mysql]'"
        ) from None


def _session_statements(
    server: str, statement_timeout: float | None, given: Mapping[str, Any]
) -> list[str]:
    """What a new connection runs before it serves (``server``: its version
    string, which says MariaDB or not), then the URL's own ``init_command``;
    the URL's ``sql_mode`` (``given``) replaces the adapter's."""
    sql_mode = str(given.get("sql_mode") or _SQL_MODE).replace("'", "''")
    settings = [f"sql_mode = '{sql_mode}'", "time_zone = '+00:00'"]
    mariadb = "mariadb" in server.lower()
    if statement_timeout:
        # Lock waits end with the statement timeout too (InnoDB's row locks,
        # and the metadata locks a migration takes), in whole seconds.
        seconds = max(1, math.ceil(statement_timeout))
        settings += [f"innodb_lock_wait_timeout = {seconds}", f"lock_wait_timeout = {seconds}"]
        if mariadb:
            settings.append(f"max_statement_time = {statement_timeout:g}")
        else:
            settings.append(f"max_execution_time = {math.ceil(statement_timeout * 1000)}")
    if not mariadb:
        # information_schema.TABLES.AUTO_INCREMENT, as it is now (see above).
        settings.append("information_schema_stats_expiry = 0")
    statements = ["SET SESSION " + ", ".join(settings)]
    if given.get("init_command"):
        statements.append(str(given["init_command"]))
    return statements


# Connect arguments the adapter runs itself, after its own session settings.
_SESSION_ARGUMENTS: Final = ("sql_mode", "init_command")


def _session_arguments(cparams: MutableMapping[str, Any]) -> dict[str, Any]:
    """Take the URL's session arguments out of ``cparams`` (and ask for utf8mb4)."""
    cparams.setdefault("charset", "utf8mb4")
    return {name: cparams.pop(name) for name in _SESSION_ARGUMENTS if name in cparams}


def _set_up_sessions(engine: sa.Engine, statement_timeout: float | None) -> None:
    """Every connection ``engine`` opens: utf8mb4, then the session settings
    (before SQLAlchemy's first look at the server, so that it sees them) and
    the URL's init_command."""

    def do_connect(_dialect: Any, record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        record.info["ablo_session"] = _session_arguments(cparams)

    def connect(dbapi_connection: Any, record: Any) -> None:
        server = record.driver_connection.get_server_info()
        statements = _session_statements(
            server, statement_timeout, record.info.get("ablo_session", {})
        )
        cursor = dbapi_connection.cursor()
        try:
            for statement in statements:
                cursor.execute(statement)
        finally:
            cursor.close()

    sa.event.listen(engine, "do_connect", do_connect)
    # First, before SQLAlchemy's own look at a new connection.
    sa.event.listen(engine, "connect", connect, insert=True)


def _read_connector(
    engine: AsyncEngine, statement_timeout: float | None, *, commits: bool = False
) -> Callable[[], Awaitable[Any]]:
    """Opens an asyncmy connection for :class:`ReadConnections` as the engine
    opens its own (same address, credentials, flags, session): in
    autocommit for reads, or (``commits``) in READ COMMITTED with autocommit
    off, so that a commit's first statement begins its transaction."""
    import asyncmy

    cargs, cparams = engine.sync_engine.dialect.create_connect_args(engine.url)
    given = _session_arguments(cparams)
    params = {**cparams, "autocommit": not commits}
    if commits:
        # A commit's last statements go in one round trip (see .mysql_commits);
        # every value in them is escaped by the driver, as in any statement.
        from asyncmy.constants import CLIENT

        params["client_flag"] = params.get("client_flag", 0) | CLIENT.MULTI_STATEMENTS

    async def connect() -> Any:
        connection = await asyncmy.connect(*cargs, **params)
        try:
            statements = _session_statements(connection.get_server_info(), statement_timeout, given)
            if commits:
                statements.insert(0, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            async with connection.cursor() as cursor:
                for statement in statements:
                    await cursor.execute(statement)
        except BaseException:
            connection.close()
            raise
        return connection

    return connect


# The bytes each of MySQL's TEXT types holds (None: LONGTEXT's 4 GiB).
_TEXT_BYTES: Final = (
    (mysql.TINYTEXT, 255),
    (mysql.MEDIUMTEXT, 16_777_215),
    (mysql.LONGTEXT, None),
    (mysql.TEXT, 65_535),
)


class _AsyncmyConnections:
    """What :class:`ReadConnections` asks of an asyncmy connection."""

    def closed(self, connection: Any) -> bool:
        return not connection.connected

    def broken(self, connection: Any) -> bool:
        # asyncmy closes a connection whose server went away.
        return not connection.connected

    def discard(self, connection: Any) -> None:
        connection.close()


def _release_commit_order(connection: sa.Connection) -> None:
    """Release the outbox lock after the transaction ended, on the driver's
    cursor (SQLAlchemy would open a transaction around it)."""
    try:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(f"DO RELEASE_LOCK({_LOCK_NAME})")
        finally:
            cursor.close()
    except Exception:
        # The lock is the session's: a session that may still hold it must
        # not serve again. Closing it frees the lock in the server.
        log.warning("the outbox lock could not be released; closing its connection")
        connection.invalidate()


def _forget_after(connection: sa.Connection) -> None:
    """Clear @ablo_commit after a commit that failed before it did, on the
    driver's cursor; a session that may still hold it must not serve again."""
    connection.info.pop(_OWN_ROWS, None)
    try:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("SET @ablo_commit = NULL")
        finally:
            cursor.close()
    except Exception:
        log.warning("a commit's capture context could not be cleared; closing its connection")
        connection.invalidate()


def _account(role: str) -> str:
    """``app`` or ``app@host`` as a MySQL account, ``'app'@'host'`` (any host: ``%``)."""
    user, at, host = role.rpartition("@")
    if not at:
        user, host = role, "%"

    def quoted(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"

    return f"{quoted(user)}@{quoted(host or '%')}"


# ------------------------------------------------------------ capture (see MySQL below)

_CREATE_STAGING: Final = f"""CREATE TABLE IF NOT EXISTS {STAGING_TABLE} (
  id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  model       TEXT NOT NULL,
  entity_id   TEXT NOT NULL,
  type        VARCHAR(16) NOT NULL,
  data        JSON,
  occurred_at BIGINT,
  created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  KEY {STAGING_TABLE}_entity (model(100), entity_id(150))
) {_TABLE_OPTIONS}"""
_STAGED_COLUMNS: Final = "id, model, entity_id, type, data, occurred_at"
# Column types a trigger stores as hex (JSON holds text, not bytes), and
# those whose values compare under a collation (a change of case is a change).
_BINARY_TYPES: Final = frozenset(
    {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit"}
)
_TEXT_TYPES: Final = frozenset(
    {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "json"}
)
_OWN_ROWS: Final = "ablo_commit_rows_set"  # Connection.info: @ablo_commit is set


def _move(connection: sa.Connection, staged: Sequence[Any]) -> None:
    """Insert ``staged`` rows into the outbox in their order (the commit-order
    lock is held), then delete exactly their ids from the staging table."""
    if not staged:
        return
    connection.exec_driver_sql(
        f"INSERT INTO {OUTBOX_TABLE} (id, model, entity_id, type, data, occurred_at) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        [(f"capture:{secrets.token_hex(12)}", *row[1:]) for row in staged],
    )
    placeholders = ", ".join(["%s"] * len(staged))
    connection.exec_driver_sql(
        f"DELETE FROM {STAGING_TABLE} WHERE id IN ({placeholders})",
        tuple(row[0] for row in staged),
    )


def _forget_own_rows(connection: sa.Connection) -> None:
    if connection.info.pop(_OWN_ROWS, False):
        connection.exec_driver_sql("SET @ablo_commit = NULL")


def _from_epoch(text: Any) -> dt.datetime:
    """A TIMESTAMP a trigger stored as its instant, as a UTC session reads it."""
    seconds = Decimal(str(text))
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    return dt.datetime(1970, 1, 1) + dt.timedelta(seconds=whole, microseconds=micro)


def _from_bits(length: int | None) -> Callable[[Any], bytes]:
    def decode(text: Any) -> bytes:
        return int(str(text), 16).to_bytes(((length or 1) + 7) // 8, "big")

    return decode


def _text_decoder(column_type: sa.types.TypeEngine[Any]) -> Callable[[Any], Any]:
    """What turns a value's text (as a trigger stored it) into what the driver
    gives for it: PyMySQL's own decoders of the text protocol (asyncmy's are
    a port of them)."""
    from pymysql import converters  # type: ignore[import-untyped]

    decoder: Callable[[Any], Any] = str
    if isinstance(column_type, mysql.TIMESTAMP):
        decoder = _from_epoch
    elif isinstance(column_type, sa.DateTime):
        decoder = converters.convert_datetime
    elif isinstance(column_type, sa.Date):
        decoder = converters.convert_date
    elif isinstance(column_type, sa.Time):
        decoder = converters.convert_timedelta
    elif isinstance(column_type, mysql.BIT):
        decoder = _from_bits(column_type.length)
    elif isinstance(column_type, sa.types._Binary):
        decoder = bytes.fromhex
    elif isinstance(column_type, (sa.Boolean, sa.Integer, mysql.YEAR)):
        decoder = int
    elif isinstance(column_type, sa.Float):
        decoder = float
    elif isinstance(column_type, sa.Numeric):
        decoder = Decimal
    return decoder


def _composed(first: Callable[[Any], Any], then: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def both(value: Any) -> Any:
        decoded = first(value)
        return None if decoded is None else then(decoded)

    return both


_QUOTE: Final = mysql.dialect().identifier_preparer


def _literal(text: str) -> str:
    """``text`` as a string literal (backslashes too: they escape in MySQL)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class MySQL(Dialect):
    name: ClassVar[str] = "mysql"
    # A read spends more of its time in MariaDB's server than in PostgreSQL's:
    # 20 connections served 23-36 % more loads and list pages at 64 in flight
    # than 10 (python bench/sql.py --mariadb --pool-size N, see the README).
    default_pool_size: ClassVar[int] = 20
    schemes: ClassVar[tuple[str, ...]] = ("mysql", "mariadb")
    url_form: ClassVar[str] = "mysql://user@host/dbname"
    url_prefix: ClassVar[str] = "mysql://"
    create_statements: ClassVar[tuple[str, str]] = _CREATE
    upgrades: ClassVar[Mapping[tuple[str, str], str]] = _UPGRADES
    last_issued_cursor: ClassVar[sa.Select[Any]] = _LAST_ISSUED_CURSOR
    print_sql_note: ClassVar[str] = (
        "-- run as a user that may create tables, in the database the connector's URL names."
    )
    thread_read_options: ClassVar[Mapping[str, Any]] = {"isolation_level": "AUTOCOMMIT"}
    #: Commits run in READ COMMITTED, set once per connection (the engine's
    #: isolation level): switching it per commit costs two statements.
    write_options: ClassVar[Mapping[str, Any]] = {}

    # ------------------------------------------------------------ URL, driver, engines

    def driver_url(self, url: sa.URL, driver: str) -> sa.URL:
        if driver not in ("", "asyncmy", "pymysql"):
            raise ConfigError(f"MySQL and MariaDB are served through asyncmy, not {driver!r}")
        if not url.database:
            raise ConfigError(
                "the database URL names no database (expected mysql://user@host/dbname)"
            )
        charset = url.query.get("charset")
        if charset is not None and charset != "utf8mb4":
            raise ConfigError(
                f"the SQL adapter talks utf8mb4 to MySQL and MariaDB, not {charset!r}: "
                "remove charset from the database URL"
            )
        return url.set(drivername=f"{url.get_backend_name()}+asyncmy")

    def create_engine(
        self,
        url: sa.URL,
        *,
        pool_size: int,
        max_overflow: int,
        pool_timeout: float,
        statement_timeout: float | None,
        must_exist: bool,
    ) -> sa.Engine:
        _require("pymysql")
        engine = sa.create_engine(
            url.set(drivername=f"{url.get_backend_name()}+pymysql"),
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=True,  # scripts and migrate are not latency-bound
            json_serializer=json_text,
        )
        _set_up_sessions(engine, statement_timeout)
        return engine

    def serving_database(self, url: sa.URL, serving: Serving) -> Database:
        _require("asyncmy")
        engine = create_async_engine(
            url,
            pool_size=serving.pool_size,
            max_overflow=0,
            pool_timeout=serving.pool_timeout,
            pool_recycle=serving.pool_recycle,
            isolation_level="READ COMMITTED",
            json_serializer=json_text,
        )
        _set_up_sessions(engine.sync_engine, serving.statement_timeout)
        reads, writes = (
            ReadConnections(
                _read_connector(engine, serving.statement_timeout, commits=for_commits),
                serving.pool_size,
                timeout=serving.pool_timeout,
                recycle=serving.pool_recycle,
                driver=_AsyncmyConnections(),
            )
            for for_commits in (False, True)
        )
        # Commits on connections of their own too (see .mysql_commits), as
        # many as SQLAlchemy's pool holds for the commits it still runs.
        commits = MySQLCommits(
            engine.sync_engine.dialect,
            writes,
            PageShapes(serving.max_page_shapes, serving.max_page_shape_bytes),
            self.connection_lost,
            _LOCK_NAME,
            _LOCK_WAIT_SECONDS,
        )
        return LoopDatabase(engine, self, serving, reads, commits)

    def loop_database(self, engine: AsyncEngine, serving: Serving) -> LoopDatabase:
        # Every read through the engine's pool: its connect arguments are the user's.
        return LoopDatabase(engine, self, serving)

    def reflection_engine(self, url: sa.URL, statement_timeout: float | None) -> sa.Engine:
        _require("pymysql")
        engine = sa.create_engine(
            url.set(drivername=f"{url.get_backend_name()}+pymysql"), poolclass=NullPool
        )
        _set_up_sessions(engine, statement_timeout)
        return engine

    async def run_read(
        self,
        connection: Any,
        sql: str,
        values: Mapping[str, Any] | Sequence[Any],
        describe: bool,
    ) -> tuple[list[Any], Sequence[Any] | None]:
        async with connection.cursor() as cursor:
            await cursor.execute(sql, values)
            rows: list[Any] = list(await cursor.fetchall())
            return rows, cursor.description if describe else None

    def connection_lost(self, connection: Any, error: BaseException) -> bool:
        # asyncmy still says "connected" after the server dropped the
        # session mid-query (2013): the error says it.
        return not connection.connected or _errno(error) in _LOST

    def check_server(self, connection: sa.Connection) -> None:
        version, session_mode, server_mode = connection.exec_driver_sql(
            "SELECT VERSION(), @@SESSION.sql_mode, @@GLOBAL.sql_mode"
        ).one()
        flavour = "MariaDB" if "mariadb" in version.lower() else "MySQL"
        numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
        if numbers < _OLDEST[flavour]:
            oldest = ".".join(map(str, _OLDEST[flavour]))
            raise ConfigError(
                f"{flavour} {version} is older than the SQL adapter serves ({flavour} {oldest} "
                "or newer)"
            )
        if not _STRICT_MODES & set(session_mode.split(",")):
            raise ConfigError(
                f"the connector's sessions run without a strict sql_mode ({session_mode or 'empty'}"
                "; the database URL's sql_mode or init_command set it): MySQL would store "
                "truncated or zero values instead of refusing them; remove that setting"
            )
        if not _STRICT_MODES & set(server_mode.split(",")):
            log.warning(
                "the server's sql_mode is not strict (%s): the connector's own sessions are, "
                "but other clients may store truncated text and zero dates, which it serves as "
                "stored",
                server_mode or "empty",
            )

    # ------------------------------------------------------------ a commit

    def run_write(
        self, engine: sa.Engine, work: Callable[[sa.Connection], T], args: tuple[Any, ...]
    ) -> T:
        with engine.connect() as connection:
            try:
                with connection.begin():
                    return work(connection, *args)
            finally:
                if not connection.invalidated:
                    if connection.info.get(_OWN_ROWS):
                        _forget_after(connection)
                    if connection.info.pop(_LOCKED, False):
                        _release_commit_order(connection)

    def reserve(self, connection: sa.Connection, row: Mapping[str, Any]) -> bool:
        try:
            connection.execute(ledger.insert().values(**row))
        except sa_exc.IntegrityError as error:
            if _errno(error.orig) == _DUPLICATE_KEY:
                return False  # committed by another commit, which this INSERT waited for
            raise
        return True

    def lock_commit_order(self, connection: sa.Connection) -> None:
        if connection.info.get(_LOCKED):
            return  # held already in this transaction (GET_LOCK would count it twice)
        acquired = connection.exec_driver_sql(
            f"SELECT GET_LOCK({_LOCK_NAME}, {_LOCK_WAIT_SECONDS})"
        ).scalar()
        if acquired != 1:
            raise SourceError(
                "source_database_timeout",
                "the commit waited too long for the outbox's commit-order lock",
                status=504,
            )
        connection.info[_LOCKED] = True

    # ------------------------------------------------------------ a list

    def pattern_match(
        self, column: sa.ColumnElement[Any], op: str, placeholder: str
    ) -> sa.ColumnElement[bool]:
        bound: sa.ColumnElement[Any] = sa.bindparam(placeholder, type_=sa.String())
        if op in ("ILIKE", "NOT ILIKE"):
            column = sa.func.lower(column)
            bound = sa.func.lower(bound)
        exact = bound.collate(_EXACT)
        if op in ("LIKE", "ILIKE"):
            return column.like(exact, escape="\\")
        return column.not_like(exact, escape="\\")

    def nulls_last(
        self, ordered: sa.UnaryExpression[Any], column: sa.ColumnElement[Any]
    ) -> tuple[sa.ColumnElement[Any], ...]:
        # No NULLS LAST: sort on "is it NULL" first (false before true).
        return (column.is_(None), ordered)

    # ------------------------------------------------------------ the driver's errors

    def configuration_problem(self, error: sa_exc.OperationalError, url: sa.URL) -> str | None:
        errno = _errno(error.orig)
        user = url.username or "(the default user)"
        if errno in (1045, 1698):
            return (
                f"the database refused the login of user {user!r}: wrong or missing password "
                "in the database URL, or no such user"
            )
        if errno == 1049:
            return (
                f"database {url.database!r} does not exist on {url.host}:{url.port or 3306}: "
                "create it, or fix the database URL"
            )
        if errno == 1044:
            return (
                f"user {user!r} may not use database {url.database!r}: grant it access, or fix "
                "the database URL"
            )
        if errno == 1130:
            return f"the database does not accept user {user!r} from this host"
        if errno in _LACKS_PRIVILEGE:
            # The server's line names the command and the table, never a value.
            return f"user {user!r} lacks a privilege the connector needs: {_message(error.orig)}"
        if errno in (1251, 2059):
            return (
                f"the database asks user {user!r} for an authentication method the driver "
                "cannot use"
            )
        return None

    def lacks_privilege(self, original: BaseException | None) -> bool:
        return _errno(original) in _LACKS_PRIVILEGE

    def timed_out(self, original: BaseException | None) -> bool:
        return _errno(original) in _TIMED_OUT

    def schema_changed(self, original: BaseException | None) -> bool:
        return _errno(original) in _GONE

    def caller_mistake(self, original: BaseException | None) -> tuple[str, int] | None:
        refused = _REFUSED.get(_errno(original) or 0)
        return None if refused is None else refused[:2]

    def refusal_message(
        self, error: sa_exc.DBAPIError, models: Sequence[ServedModel]
    ) -> tuple[str, str | None]:
        errno = _errno(error.orig) or 0
        message = _message(error.orig)
        named: list[str] = []
        field = None
        column = next((m.group(1) for p in _COLUMN if (m := p.search(message))), None)
        if column is not None:
            named.append(f"column {column}")
            field = next((s.fields[column] for s in models if column in s.fields), None)
        key = _KEY.search(message)
        if key is not None:
            named.append(f"key {key.group(1)}")
        constraint = _CONSTRAINT.search(message)
        if constraint is not None:
            named.append(f"constraint {constraint.group(1) or constraint.group(2)}")
        what = _REFUSED.get(errno, ("", 0, "a value"))[2]
        condition = f"the database refused the request: {what} (MySQL error {errno})" + (
            f" on {', '.join(named)}" if named else ""
        )
        return (condition, None) if field is None else (f"field {field!r}: {condition}", field)

    def describe(self, original: BaseException) -> str | None:
        if not type(original).__module__.startswith(("asyncmy", "pymysql")):
            return None
        message = _message(original)
        return describe_error(message) if message else None

    # ------------------------------------------------------------ migrate

    def grant_statements(
        self, connection: sa.Connection, role: str, served: Sequence[sa.Table]
    ) -> list[str]:
        """The GRANTs that let ``role`` (``app``, or ``app@host``) serve
        ``served`` with the ledger and outbox, and nothing more. The named
        lock and the catalog need no privilege."""
        preparer = connection.dialect.identifier_preparer
        database = str(connection.exec_driver_sql("SELECT DATABASE()").scalar())
        grantee = _account(role)

        def qualified(schema: str | None, name: str) -> str:
            return f"{preparer.quote_schema(schema or database)}.{preparer.quote(name)}"

        statements = [
            f"GRANT {_SERVED_PRIVILEGES} ON {qualified(table.schema, table.name)} TO {grantee};"
            for table in served
        ]
        statements.append(
            f"GRANT {_LEDGER_PRIVILEGES} ON {qualified(None, LEDGER_TABLE)} TO {grantee};"
        )
        statements.append(
            f"GRANT {_OUTBOX_PRIVILEGES} ON {qualified(None, OUTBOX_TABLE)} TO {grantee};"
        )
        if capture_installed(connection):
            # Which models are captured; the staged rows it moves into the outbox.
            statements.append(f"GRANT SELECT ON {qualified(None, CAPTURE_TABLE)} TO {grantee};")
            statements.append(
                f"GRANT SELECT, DELETE ON {qualified(None, STAGING_TABLE)} TO {grantee};"
            )
        return statements

    # ------------------------------------------------------------ capture
    #
    # Ordering. A reader pages by cursor and never goes back, so a cursor must
    # not become visible while a smaller one can still commit. MySQL's and
    # MariaDB's triggers run at statement time, and a named lock (GET_LOCK)
    # belongs to the session, not the transaction: a trigger can neither
    # defer its outbox row to COMMIT nor hold a lock until then. So the
    # triggers do not write the outbox. They stage each change in
    # ablo_capture_pending (its own AUTO_INCREMENT id, the model, the entity
    # id, the type, the row as the other databases' triggers store it, see
    # .capture), which takes no lock the application's writers wait on: a
    # transaction that stays open for minutes stalls nobody.
    #
    # The connector is the only writer of the outbox. Before it reads a page
    # of events (and at each probe, so that the metrics see the outbox), it
    # moves the staged rows that are committed, in one transaction, under the
    # commit-order lock its own commits take (GET_LOCK, held through COMMIT,
    # see lock_commit_order): once it holds the lock (so that it reads after
    # the last mover's COMMIT), it reads at most a batch of staged rows ORDER
    # BY id (a consistent read: committed rows only), inserts them into the outbox
    # in that order, deletes exactly those ids (by their list: under READ
    # COMMITTED a smaller id can commit between two statements, and a range
    # would delete it unmoved), commits, and releases the lock. Every outbox
    # insert, the connector's commits' and the mover's, happens under that
    # lock held through COMMIT, so outbox cursors become visible in the order
    # they are drawn: a reader never skips one. A staged row still
    # uncommitted is moved by a later pass, under a larger cursor.
    #
    # Per-entity order. A second writer of the same row waits on the first
    # one's row lock until it commits, and its trigger runs only then, so it
    # draws a larger staging id; the mover moves in id order, so a row's
    # events reach the outbox in the order its writers committed. A
    # connector commit holds the row locks of the rows it writes: every
    # earlier write to them is committed, and before the commit writes its
    # own events it moves theirs (end_captured_commit), under the lock.
    #
    # The connector's own commits write their own events (see .capture): a
    # commit sets the session variable @ablo_commit to the rows it writes
    # (a JSON array of "model\nid") and clears it after its last write (and
    # after the transaction, whatever happened); a trigger that finds its row
    # there stages nothing. Triggers run with their definer's privileges:
    # the application's users need no privilege on the staging table.
    #
    # The cost: an application's write reaches the outbox when the connector
    # next pages events or probes, a bounded batch per page request (a page
    # never waits on moving a million rows; the pages simply go on).

    capture_state_create: ClassVar[str | None] = f"""CREATE TABLE IF NOT EXISTS {CAPTURE_TABLE} (
  model        VARCHAR(255) NOT NULL PRIMARY KEY,
  schema_name  TEXT,
  table_name   TEXT NOT NULL,
  trigger_name TEXT NOT NULL,
  columns      TEXT NOT NULL,
  signature    TEXT NOT NULL,
  installed_at DATETIME(6)
) {_TABLE_OPTIONS}"""
    capture_refusal: ClassVar[str | None] = None
    stages_capture: ClassVar[bool] = True
    capture_helpers: ClassVar[bool] = False

    def capture_setup_statements(self) -> list[str]:
        return [str(self.capture_state_create), _CREATE_STAGING]

    def capture_teardown_statements(self) -> list[str]:
        return [f"DROP TABLE IF EXISTS {STAGING_TABLE}", f"DROP TABLE IF EXISTS {CAPTURE_TABLE}"]

    def replaces_capture(self, connection: sa.Connection) -> bool:
        return bool(getattr(connection.dialect, "is_mariadb", False))

    def capture_problem(self, connection: sa.Connection, spec: CaptureSpec) -> str | None:
        engine = connection.execute(
            sa.text(
                "SELECT ENGINE FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
            ),
            {"schema": spec.schema, "table": spec.table},
        ).scalar()
        if engine is not None and str(engine).lower() != "innodb":
            return (
                f"table {spec.table} (model {spec.model!r}) uses the {engine} engine: capture "
                "needs InnoDB (its row locks and transactions order the events); convert it "
                f"(ALTER TABLE {spec.table} ENGINE=InnoDB) or give the model capture = false"
            )
        return None

    def script(self, statements: Sequence[str]) -> list[str]:
        # A trigger's body holds semicolons: the client needs another delimiter.
        lines = ["DELIMITER //"]
        lines += [f"{statement} //" for statement in statements]
        return [*lines, "DELIMITER ;"]

    def install_capture_statements(self, connection: sa.Connection, spec: CaptureSpec) -> list[str]:
        quote = connection.dialect.identifier_preparer.quote
        database = str(connection.exec_driver_sql("SELECT DATABASE()").scalar())
        schema = spec.schema or database
        table = f"{quote(schema)}.{quote(spec.table)}"
        staging = f"{quote(database)}.{STAGING_TABLE}"
        types: dict[str, str] = dict(
            connection.execute(  # type: ignore[arg-type]
                sa.text(
                    "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = :schema AND TABLE_NAME = :table"
                ),
                {"schema": schema, "table": spec.table},
            ).all()
        )
        literal = text_literal(connection.dialect, _literal)
        model = literal(spec.model)

        def kind_of(column: str) -> str:
            return str(types.get(column, "")).lower()

        def stored(row: str, column: str) -> str:
            # Each value as its text, which events decodes as the driver
            # decodes the text protocol (see captured_value_processors).
            item = f"{row}.{quote(column)}"
            kind = kind_of(column)
            if kind in _BINARY_TYPES:
                return f"HEX({item})"
            if kind == "timestamp":  # the instant, whatever the writer's time_zone
                return f"UNIX_TIMESTAMP({item})"
            return f"CAST({item} AS CHAR)"

        def same(column: str) -> str:
            old, new = f"OLD.{quote(column)}", f"NEW.{quote(column)}"
            if kind_of(column) in _TEXT_TYPES:  # 'a' = 'A' under most collations
                return f"BINARY {old} <=> BINARY {new}"
            return f"{old} <=> {new}"

        def entity(row: str) -> str:
            return f"CAST({row}.{quote(spec.id_column)} AS CHAR)"

        def stage(row: str, kind: str, data: str) -> str:
            return (
                f"INSERT INTO {staging} (model, entity_id, type, data, occurred_at) VALUES "
                f"({model}, {entity(row)}, {kind}, {data}, "
                "FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000));"
            )

        def not_own(row: str) -> str:
            key = f"JSON_QUOTE(CONCAT({model}, CHAR(10 USING utf8mb4), {entity(row)}))"
            return f"(@ablo_commit IS NULL OR NOT JSON_CONTAINS(@ablo_commit, {key}))"

        data = (
            "JSON_ARRAY(JSON_OBJECT("
            + ", ".join(f"{literal(c)}, {stored('NEW', c)}" for c in spec.columns)
            + "))"
        )
        kind = "'UPDATE'"
        if spec.archived_column is not None:
            archived = quote(spec.archived_column)
            others = [same(c) for c in spec.columns if c != spec.archived_column]
            kind = (
                f"CASE WHEN {' AND '.join(others) or 'TRUE'} THEN CASE WHEN NEW.{archived} IS "
                "NULL THEN 'UNARCHIVE' ELSE 'ARCHIVE' END ELSE 'UPDATE' END"
            )
        changed = " AND ".join(same(c) for c in spec.columns)
        name = spec.trigger_name

        # MariaDB replaces a trigger in one statement, under the table's
        # metadata lock: a reinstall leaves no write unrecorded. MySQL 8 has
        # no such statement: the old triggers are dropped first, and a write
        # in between is not recorded (its DDL is not transactional).
        create = (
            "CREATE OR REPLACE TRIGGER" if self.replaces_capture(connection) else "CREATE TRIGGER"
        )

        def trigger(event: str, body: str) -> str:
            return (
                f"{create} {quote(schema)}.{quote(f'{name}_{event.lower()}')} AFTER "
                f"{event} ON {table} FOR EACH ROW\nBEGIN\n{body}\nEND"
            )

        return [
            trigger(
                "INSERT",
                f"  IF {not_own('NEW')} THEN\n    {stage('NEW', repr('CREATE'), data)}\n  END IF;",
            ),
            trigger(
                "UPDATE",
                f"  IF NOT ({changed}) AND {not_own('NEW')} THEN\n"
                f"    IF NOT ({same(spec.id_column)}) THEN\n"
                "      -- A new id is another row: the old one is gone, the new one created.\n"
                f"      {stage('OLD', repr('DELETE'), 'NULL')}\n"
                f"      {stage('NEW', repr('CREATE'), data)}\n"
                "    ELSE\n"
                f"      {stage('NEW', kind, data)}\n"
                "    END IF;\n"
                "  END IF;",
            ),
            trigger(
                "DELETE",
                f"  IF {not_own('OLD')} THEN\n    {stage('OLD', repr('DELETE'), 'NULL')}\n  END IF;",
            ),
        ]

    def remove_capture_statements(
        self, schema: str | None, table: str, trigger_name: str
    ) -> list[str]:
        quote = _QUOTE.quote
        where = f"{quote(schema)}." if schema else ""
        return [
            f"DROP TRIGGER IF EXISTS {where}{quote(f'{trigger_name}_{event}')}"
            for event in ("insert", "update", "delete")
        ]

    def begin_captured_commit(self, connection: sa.Connection, context: CommitContext) -> None:
        connection.info[_OWN_ROWS] = True
        connection.exec_driver_sql("SET @ablo_commit = %s", (json.dumps(context.keys()),))

    def end_captured_commit(self, connection: sa.Connection, context: CommitContext) -> None:
        # Earlier writes of these rows are committed (the commit holds their
        # row locks) and may still be staged: their events go first.
        self.lock_commit_order(connection)
        keys = sorted(context.rows)
        where = " OR ".join("(model = %s AND entity_id = %s)" for _ in keys)
        # A locking read: the rows as committed now, not as a REPEATABLE READ
        # snapshot taken by the commit's earlier reads (before this lock) saw
        # them, which could still show rows a mover has moved since.
        staged = connection.exec_driver_sql(
            f"SELECT {_STAGED_COLUMNS} FROM {STAGING_TABLE} WHERE {where} ORDER BY id FOR UPDATE",
            tuple(value for key in keys for value in key),
        ).all()
        _move(connection, staged)
        _forget_own_rows(connection)

    def has_staged(self, connection: sa.Connection) -> bool:
        try:
            found = connection.exec_driver_sql(f"SELECT 1 FROM {STAGING_TABLE} LIMIT 1").first()
        except sa_exc.DBAPIError as error:
            if _errno(error.orig) == _NO_SUCH_TABLE:
                return False  # capture removed under a running connector (it notices at its probe)
            raise
        return found is not None

    def move_captured(self, connection: sa.Connection, limit: int) -> int:
        # The lock first: the rows read after it are read after the last
        # mover's COMMIT, also in a REPEATABLE READ transaction (whose
        # snapshot is taken at its first read), so none is moved twice.
        self.lock_commit_order(connection)
        try:
            staged = connection.exec_driver_sql(
                f"SELECT {_STAGED_COLUMNS} FROM {STAGING_TABLE} ORDER BY id LIMIT {int(limit)}"
            ).all()
        except sa_exc.DBAPIError as error:
            if _errno(error.orig) == _NO_SUCH_TABLE:
                return 0
            raise
        _move(connection, staged)
        return len(staged)

    def captured_value_processors(
        self, served: ServedModel, dialect: sa.Dialect
    ) -> dict[str, Callable[[Any], Any]]:
        from ..capture import result_processors

        after = result_processors(served, dialect)
        found: dict[str, Callable[[Any], Any]] = {}
        for column in served.selected:
            decode = _text_decoder(column.type)
            then = after.get(column.name)
            found[column.name] = decode if then is None else _composed(decode, then)
        return found

    # ------------------------------------------------------------ values

    def orderable(self, column_type: sa.types.TypeEngine[Any]) -> bool:
        # MySQL sorts an ENUM by its members' order but compares it with a
        # string as text, so a cursor after a row would skip or repeat rows;
        # a SET is served as a list, which no cursor holds.
        return not isinstance(column_type, mysql.ENUM | mysql.SET)

    def single_precision(self, column_type: sa.types.TypeEngine[Any]) -> bool:
        # FLOAT; REAL and FLOAT(25..53) are DOUBLE, and reflect as such
        return isinstance(column_type, mysql.FLOAT)

    def integer_bits(self, column_type: sa.types.TypeEngine[Any]) -> int:
        if isinstance(column_type, mysql.TINYINT):
            return 8
        if isinstance(column_type, mysql.MEDIUMINT):
            return 24
        if isinstance(column_type, sa.SmallInteger):
            return 16
        if isinstance(column_type, sa.BigInteger):
            return 64
        return 32

    def integer_unsigned(self, column_type: sa.types.TypeEngine[Any]) -> bool:
        return bool(getattr(column_type, "unsigned", False))

    def text_capacity(self, column_type: sa.types.TypeEngine[Any]) -> int | None:
        # MySQL's TEXT types state no length, yet bound their bytes (ASCII:
        # characters); LONGTEXT's 4 GiB is no bound a request can reach.
        for text_type, capacity in _TEXT_BYTES:
            if isinstance(column_type, text_type):
                return capacity
        return super().text_capacity(column_type)

    def adapt_reflected(self, connection: sa.Connection, table: sa.Table) -> None:
        """``TINYINT(1)`` is MySQL's ``BOOLEAN``: served as true and false.
        MariaDB's ``JSON`` is ``LONGTEXT`` with a ``json_valid`` check, which
        reflection reports as text: served as JSON. ``DOUBLE`` and ``FLOAT``
        are reflected as decimals: served as the numbers they are."""
        documents: set[str] = set()
        if getattr(connection.dialect, "is_mariadb", False):
            # A column's own CHECK, which SQLAlchemy's reflection does not read.
            checks = connection.execute(
                _CHECKS, {"schema": table.schema, "table": table.name}
            ).scalars()
            for check in checks:
                found = _JSON_CHECK.fullmatch(str(check).strip())
                if found is not None:
                    documents.add(found.group(1).replace("``", "`"))
        for column in table.columns:
            if column.name in documents:
                column.type = mysql.JSON()
            elif isinstance(column.type, mysql.TINYINT) and column.type.display_width == 1:
                column.type = sa.Boolean()
            elif isinstance(column.type, sa.Float) and column.type.asdecimal:
                column.type.asdecimal = False
