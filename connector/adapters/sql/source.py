"""A :class:`~connector.DataSource` served straight from SQL tables.

Reads are one SELECT each. A commit is one database transaction holding the
row changes, one ledger row and one outbox event per operation, and (on
PostgreSQL, when asked) the WAL echo; it either all happens or none of it.

The ledger row is *reserved* before any row is touched (``INSERT … ON
CONFLICT DO NOTHING``). A concurrent commit with the same ``correlationId``
waits on that row (PostgreSQL's unique index; SQLite's write lock), then
finds it and replays the stored answer: one database arbiter, one effect.

The methods are ``async def``. On PostgreSQL a request never leaves the event
loop: SQLAlchemy's asyncio extension drives psycopg 3's async driver, and
each operation runs as one piece of synchronous SQLAlchemy code inside one
greenlet (:func:`sqlalchemy.util.greenlet_spawn`), so its statements cost no
thread and no hop between threads. SQLite's driver blocks, so there each
operation runs in one of the source's own worker threads.

Reads run in autocommit mode: one statement, one round trip, no ``BEGIN``
or ``ROLLBACK``. Connections are not pinged when checked out; a request
that finds its pooled connection dead retries once on a fresh one (a commit
may, because the ledger makes it idempotent).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import os
import re
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.util import await_only, greenlet_spawn

from ..._redact import redact_url
from ...errors import ConfigError, SourceError, describe_error
from ...serve.datasource import DataSource, MaybeAwaitable, RequestContext
from ...serve.models import ModelNames
from ...wire.bodies import CommitRequest, CommitResult, EventsPage, ListPage, ListQuery, Operation
from .connections import ReadConnections
from .drift import (
    SCHEMA_CHANGED,
    PoolRenewal,
    SchemaChanged,
    Unservable,
    describe_changes,
    is_schema_change,
)
from .models import ModelMap, ModelSpec, ServedModel
from .query import MAX_BOUND_VALUES, column_for, plan_list
from .schema import last_issued_cursor, ledger, outbox, verify_tables
from .values import json_text, python_type, to_column_value, to_json_row, to_json_value

__all__ = [
    "DEFAULT_POOL_SIZE",
    "shown_url",
    "SQLSource",
    "configuration_problem",
    "create_database_engine",
    "database_url",
    "describe_database_error",
    "served_tables",
]

log = logging.getLogger("connector.sql")

T = TypeVar("T")

ECHO_PREFIX: Final = "ablo"
# The transaction-scoped advisory lock that orders outbox writes by commit
# (an arbitrary constant: the bytes of "abloOutb" as a signed 64-bit integer).
OUTBOX_LOCK: Final = int.from_bytes(b"abloOutb", "big", signed=True)
LEDGER_RETENTION: Final = dt.timedelta(days=30)
# Database connections held open. On PostgreSQL more connections than this
# bought no throughput at 64 requests in flight on a 2-core host (see
# bench/sql.py); requests beyond it wait for a connection on the event loop.
DEFAULT_POOL_SIZE: Final = 10
# A connection is replaced after this long, so a server-side idle timeout or
# a failover never meets a request first (which would then retry once).
POOL_RECYCLE_SECONDS: Final = 1800
POOL_TIMEOUT_SECONDS: Final = 10.0  # waiting for a free pooled connection
# List page shapes kept compiled (where fields and operators, order, cursor):
# at most this many, holding at most this many bytes (SQL text and keys; no
# request's values), whichever comes first.
_MAX_PAGE_SHAPES: Final = 256
_MAX_PAGE_SHAPE_BYTES: Final = 4 * 1024 * 1024
_UNSEEN: Final[Any] = object()  # a shape not compiled yet (None: one SQLAlchemy must run)


def shown_url(url: sa.URL) -> str:
    """The URL as an operator may see it: no password, in its userinfo or its query."""
    return redact_url(url.render_as_string(hide_password=True))


def database_url(url: str | sa.URL) -> sa.URL:
    """Parse a database URL, choosing psycopg 3 for ``postgresql://``/``postgres://``."""
    try:
        parsed = sa.make_url(url)
    except (sa_exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(
            "the database URL is not valid (expected sqlite:///path.db or "
            "postgresql://user@host/dbname)"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend == "postgresql":
        if driver not in ("", "psycopg"):
            raise ConfigError(f"PostgreSQL is served through psycopg 3, not {driver!r}")
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise ConfigError(f"SQLite is served through the standard library, not {driver!r}")
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(
                "an in-memory SQLite database is private to one connection; use a file: sqlite:///path.db"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    raise ConfigError(
        f"unsupported database {backend!r}: the SQL adapter serves sqlite:/// and postgresql:// URLs"
    )


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError(
            "PostgreSQL needs psycopg 3: pip install 'ablo-connector[postgres]'"
        ) from None


def _postgres_connect_args(url: sa.URL, statement_timeout: float | None) -> dict[str, Any]:
    """The adapter's connection settings, merged into the URL's own: nothing
    the user set (in the URL, or in libpq's PG* variables) is replaced.

    ``statement_timeout`` cancels a statement that runs longer, in the
    database: a request past its deadline has been answered already, and its
    query must not keep holding a connection and its locks. It travels in
    libpq's ``options``, ahead of the user's own ``options`` (or PGOPTIONS,
    which an explicit ``options`` would silently replace): the server applies
    them in order, so the user's ``-c search_path=…`` always survives and the
    user's own ``-c statement_timeout=…`` wins over ours.
    """
    given = url.query
    args: dict[str, Any] = {}
    if "connect_timeout" not in given and not os.environ.get("PGCONNECT_TIMEOUT"):
        args["connect_timeout"] = 10
    if "fallback_application_name" not in given:
        # libpq uses it only when neither the URL nor PGAPPNAME names the application.
        args["fallback_application_name"] = "ablo-connector"
    options = given.get("options", os.environ.get("PGOPTIONS"))
    user_options = " ".join(options) if isinstance(options, tuple) else options
    ours = f"-c statement_timeout={int(statement_timeout * 1000)}" if statement_timeout else ""
    merged = " ".join(part for part in (ours, user_options) if part)
    if merged:
        args["options"] = merged
    return args


def configuration_problem(error: sa_exc.OperationalError, url: sa.URL) -> str | None:
    """A connection failure that waiting will not cure, as one line, or None.

    The one place that tells a refused login, an unknown user or database
    (exit 78, a configuration mistake, for ``run``, ``migrate`` and
    ``check`` alike) from a database that cannot be reached right now.
    """
    text = str(getattr(error, "orig", None) or error)
    user = url.username or "(the default user)"
    if "password authentication failed" in text or "no password supplied" in text:
        return (
            f"the database refused the login of user {user!r}: wrong or missing password "
            "in the database URL"
        )
    if re.search(r'role "[^"]*" does not exist', text):
        return f"the database has no user {user!r}: check the user in the database URL"
    if re.search(r'database "[^"]*" does not exist', text):
        return (
            f"database {url.database!r} does not exist on {url.host}:{url.port or 5432}: "
            "create it, or fix the database URL"
        )
    if "no pg_hba.conf entry" in text or "authentication failed" in text:
        return (
            f"the database does not accept user {user!r} from this host (pg_hba.conf), "
            "or its authentication failed"
        )
    return None


def _existing_sqlite_file(parsed: sa.URL) -> None:
    path = Path(str(parsed.database))
    if not path.is_file():
        raise ConfigError(
            f"the SQLite database {str(path)!r} does not exist (sqlite:///relative/path.db is "
            "relative to the working directory; sqlite:////absolute/path.db is absolute)"
        )


def create_database_engine(
    url: str | sa.URL,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
    statement_timeout: float | None = 30.0,
    must_exist: bool = False,
) -> sa.Engine:
    """A synchronous engine with the settings the adapter relies on.

    ``must_exist`` refuses a SQLite file that is not there (SQLite would
    create an empty one). :class:`SQLSource` serves PostgreSQL through an
    asyncio engine instead; this one is for ``migrate``, scripts and tests.
    """
    parsed = database_url(url)
    if parsed.get_backend_name() == "postgresql":
        _require_psycopg()
        return sa.create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=True,  # scripts and migrate are not latency-bound
            json_serializer=json_text,
            connect_args=_postgres_connect_args(parsed, statement_timeout),
        )
    if must_exist:
        _existing_sqlite_file(parsed)
    engine = sa.create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        json_serializer=json_text,
        connect_args={"timeout": 30, "check_same_thread": False},
    )
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _create_postgres_async_engine(
    parsed: sa.URL, pool_size: int, statement_timeout: float | None
) -> AsyncEngine:
    _require_psycopg()
    return create_async_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        pool_recycle=POOL_RECYCLE_SECONDS,
        # Reads need no transaction; writes ask for one (_LoopDatabase).
        isolation_level="AUTOCOMMIT",
        json_serializer=json_text,
        connect_args=_postgres_connect_args(parsed, statement_timeout),
    )


def _read_connector(
    engine: AsyncEngine, statement_timeout: float | None
) -> Callable[[], Awaitable[Any]]:
    """Opens a psycopg connection for :class:`ReadConnections` as the engine
    opens its own (same address, credentials, type adapters, timeouts), in
    autocommit."""
    import psycopg

    cargs, cparams = engine.sync_engine.dialect.create_connect_args(engine.url)
    params = {
        **cparams,
        **_postgres_connect_args(engine.url, statement_timeout),
        "autocommit": True,
    }

    async def connect() -> Any:
        return await psycopg.AsyncConnection.connect(*cargs, **params)

    return connect


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer
    # it past the first SELECT, and never take the write lock up front).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # LIKE is case-sensitive, as on PostgreSQL; ILIKE is emulated with lower().
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    options = connection.get_execution_options()
    if options.get("ablo_read", False):
        return  # one SELECT is atomic on its own: no transaction to open or end
    # A commit takes the write lock before reading the ledger, so two
    # identical commits serialize instead of both deciding to write.
    connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get("ablo_write") else "BEGIN")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------ how work runs


def _run_read(engine: sa.Engine, work: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.connect() as connection:
        return work(connection, *args)


def _run_write(engine: sa.Engine, work: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.begin() as connection:
        return work(connection, *args)


@dataclass(slots=True)
class _Compiled:
    """A statement compiled once for the driver, with what binding and reading it takes.

    It keeps no request's values: a long-lived statement's ``defaults`` are
    its own, and a list page's shape takes each request's values from that
    request's statement (``slots``).
    """

    sql: str
    defaults: dict[str, Any]
    bind_processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    columns: tuple[sa.types.TypeEngine[Any], ...]
    # A list page's shape: each placeholder's position among the values
    # SQLAlchemy extracts from a statement of that shape (its cache key's).
    slots: tuple[tuple[str, int], ...] = ()
    # Known after the first execution (some depend on the type the driver reports).
    result_processors: tuple[Callable[[Any], Any] | None, ...] | None = None
    described: bool = False

    def values_of(self, extracted: Sequence[Any]) -> dict[str, Any]:
        """The values to bind, from the bound parameters of one statement of this shape."""
        return {name: extracted[position].effective_value for name, position in self.slots}

    def learn(self, dialect: sa.Dialect, description: Sequence[Any]) -> None:
        processors = tuple(
            column.dialect_impl(dialect).result_processor(dialect, described.type_code)
            for column, described in zip(self.columns, description, strict=True)
        )
        self.result_processors = processors if any(p is not None for p in processors) else None
        self.described = True


def _completed_at_execution(compiled: Any) -> bool:
    """Whether SQLAlchemy finishes this SQL only when it runs it (IN lists
    expanded, values rendered inline, names escaped)."""
    return bool(
        compiled.post_compile_params
        or compiled.literal_execute_params
        or getattr(compiled, "escaped_bind_names", None)
    )


def _approximate_size(key: Any) -> int:
    """Bytes held by a cache key (nested tuples of names, numbers and shared
    objects such as types, which count only as a reference)."""
    size, pending, seen = 0, [key], set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, tuple):
            size += sys.getsizeof(item)
            pending.extend(item)
        elif isinstance(item, str | bytes | int | float):
            size += sys.getsizeof(item)
    return size


class _PageShapes:
    """The compiled list page shapes, the most recently used kept, bounded by
    count and by bytes: a shape holds its SQL text and its key, which grow
    with its conditions (64 at most), never with the values of a request."""

    def __init__(self, max_shapes: int, max_bytes: int) -> None:
        self._max_shapes = max_shapes
        self._max_bytes = max_bytes
        self._shapes: collections.OrderedDict[Any, tuple[_Compiled | None, int]] = (
            collections.OrderedDict()
        )
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._shapes)

    def get(self, key: Any) -> _Compiled | None:
        """The shape for ``key`` (None: SQLAlchemy must run it), or ``_UNSEEN``."""
        found = self._shapes.get(key)
        if found is None:
            return _UNSEEN  # type: ignore[no-any-return]
        self._shapes.move_to_end(key)
        return found[0]

    def put(self, key: Any, shape: _Compiled | None) -> None:
        size = _approximate_size(key) + (0 if shape is None else 2 * sys.getsizeof(shape.sql))
        self._shapes[key] = (shape, size)
        self.bytes += size
        while self._shapes and (
            len(self._shapes) > self._max_shapes or self.bytes > self._max_bytes
        ):
            _, (_, dropped) = self._shapes.popitem(last=False)
            self.bytes -= dropped

    def clear(self) -> None:
        self._shapes.clear()
        self.bytes = 0


def _process_rows(compiled: _Compiled, rows: list[Any]) -> list[Any]:
    processors = compiled.result_processors
    if processors is None:
        return rows
    return [
        tuple(value if p is None else p(value) for p, value in zip(processors, row, strict=True))
        for row in rows
    ]


class _LoopDatabase:
    """PostgreSQL on the event loop: one greenlet per operation, no threads.

    Reads (a load by id, a list page, a page of events) skip SQLAlchemy's
    execution layer: their statements are compiled once, and run on a psycopg
    connection directly as prepared statements, which halves the CPU a read
    costs (see bench/sql.py). The connection comes from ``reads`` (see
    :mod:`.connections`) when given, else from SQLAlchemy's pool (an engine
    passed in by the user, whose connect arguments we cannot repeat).
    """

    def __init__(self, engine: AsyncEngine, reads: ReadConnections | None = None) -> None:
        self.engine = engine
        self._read_connections = reads
        self._reads = engine.sync_engine
        self._writes = engine.sync_engine.execution_options(isolation_level="READ COMMITTED")
        self._pool = engine.sync_engine.pool
        self._dialect = engine.sync_engine.dialect
        self._compiled: dict[sa.Select[Any], _Compiled] = {}
        # List pages by shape; None: a shape SQLAlchemy must run (see fetch_page).
        self._shapes = _PageShapes(_MAX_PAGE_SHAPES, _MAX_PAGE_SHAPE_BYTES)
        self._renewal = PoolRenewal(engine.sync_engine)

    def forget_statements(self) -> None:
        """Drop the compiled statements: their result processors follow the
        column types they were compiled for, and their models may be gone."""
        self._compiled.clear()
        self._shapes.clear()

    def renew(self) -> None:
        """Forget what was prepared before a served table changed: compiled
        statements and every connection's prepared statements."""
        self.forget_statements()
        self._renewal.renew()
        if self._read_connections is not None:
            self._read_connections.renew()

    async def read(self, work: Callable[..., T], *args: Any) -> T:
        return await greenlet_spawn(_run_read, self._reads, work, args)

    async def write(self, work: Callable[..., T], *args: Any) -> T:
        return await greenlet_spawn(_run_write, self._writes, work, args)

    def _compiled_for(self, statement: sa.Select[Any]) -> _Compiled:
        """A long-lived statement (a model's load, a page of events), compiled."""
        compiled = statement.compile(dialect=self._dialect)
        return _Compiled(
            compiled.string,
            dict(compiled.params),
            self._bind_processors(compiled),
            tuple(column.type for column in statement.selected_columns),
        )

    def _shape_for(self, statement: sa.Select[Any], cache_key: Any) -> _Compiled | None:
        """The compiled form of every list page of ``statement``'s shape, or None
        for a shape SQLAlchemy must run: one whose SQL is only complete at
        execution (an IN list expanded then), or with a value compiled into it
        (which could be this request's, and must not be kept or reused)."""
        dialect = self._dialect
        compiled = dialect.statement_compiler(dialect, statement, cache_key=cache_key)
        if _completed_at_execution(compiled):
            return None
        # Statements of one shape extract their bound parameters in the same
        # order, and each keeps its key in the compiled SQL's placeholders.
        extracted = cache_key.bindparams
        position = {bind.key: index for index, bind in enumerate(extracted)}
        slots = []
        for bind, name in compiled.bind_names.items():  # name: as the SQL text has it
            index = position.get(bind.key)
            if index is None:
                return None
            slots.append((name, index))
        shape = _Compiled(
            compiled.string,
            {},
            self._bind_processors(compiled),
            tuple(column.type for column in statement.selected_columns),
            slots=tuple(slots),
        )
        if shape.values_of(extracted) != compiled.construct_params(extracted_parameters=extracted):
            return None  # not the values SQLAlchemy would bind: let it run this shape
        return shape

    def _bind_processors(self, compiled: Any) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
        dialect = self._dialect
        binds = []
        for bind, name in compiled.bind_names.items():  # name: as the SQL text has it
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                binds.append((name, processor))
        return tuple(binds)

    async def fetch_page(self, statement: sa.Select[Any]) -> Sequence[Any]:
        """The rows of a statement built per request (a list page).

        On the read connections, as a prepared statement, when its shape
        allows: compiled once per shape (SQLAlchemy's cache key, the way its
        own compiled cache works), its values bound from the statement at
        hand. A shape whose SQL is only complete at execution (an IN list
        expanded then) goes through SQLAlchemy.
        """
        pool = self._read_connections
        cache_key = statement._generate_cache_key() if pool is not None else None
        if pool is None or cache_key is None:
            return await self.read(_all, statement)
        if self._dialect.server_version_info is None:
            await self._set_up_dialect()
        shape = self._shapes.get(cache_key.key)
        if shape is _UNSEEN:
            shape = self._shape_for(statement, cache_key)
            self._shapes.put(cache_key.key, shape)
        if shape is None:
            return await self.read(_all, statement)
        return await self._run(shape, shape.values_of(cache_key.bindparams))

    async def _set_up_dialect(self) -> None:
        """Connect SQLAlchemy's engine once: its dialect learns the server then
        (how string literals escape, which type adapters to register), and the
        SQL compiled here and the connections opened here depend on it."""
        async with self.engine.connect():
            pass

    async def fetch(self, statement: sa.Select[Any], params: Mapping[str, Any]) -> list[Any]:
        """The rows (tuples) of a long-lived statement, e.g. a model's load statement."""
        if self._dialect.server_version_info is None:
            await self._set_up_dialect()
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = self._compiled_for(statement)
        return await self._run(compiled, {**compiled.defaults, **params})

    async def _run(self, compiled: _Compiled, values: dict[str, Any]) -> list[Any]:
        """``compiled`` with ``values`` bound, on a read connection (or
        SQLAlchemy's pool, without them); its rows, processed."""
        for name, processor in compiled.bind_processors:
            values[name] = processor(values[name])
        pool = self._read_connections
        if pool is None:
            rows = await greenlet_spawn(self._fetch_in_greenlet, compiled, values)
        else:
            rows = await self._fetch_directly(pool, compiled, values)
        return _process_rows(compiled, rows)

    async def _fetch_directly(
        self, pool: ReadConnections, compiled: _Compiled, values: dict[str, Any]
    ) -> list[Any]:
        dialect = self._dialect
        driver_error = dialect.loaded_dbapi.Error
        try:
            connection, opened = await pool.acquire()
        except driver_error as error:
            raise self._wrapped(error) from None
        try:
            cursor = connection.cursor()
            await cursor.execute(compiled.sql, values, prepare=True)
            rows: list[Any] = await cursor.fetchall()
            if not compiled.described:
                compiled.learn(dialect, cursor.description)
        except driver_error as error:
            # In autocommit a failed statement leaves the connection usable,
            # unless the failure was the connection itself.
            disconnect = bool(connection.closed or connection.broken)
            pool.release(connection, opened, failed=disconnect)
            raise self._wrapped(error, disconnect, compiled.sql) from None
        except BaseException:
            # Cancelled mid-statement: the connection's state is unknown.
            pool.release(connection, opened, failed=True)
            raise
        pool.release(connection, opened)
        return rows

    def _wrapped(
        self, error: Exception, invalidated: bool = False, sql: str | None = None
    ) -> sa_exc.StatementError:
        """A driver's error as SQLAlchemy's execute raises it, so the adapter
        classifies both paths' failures alike (with the SQL, never the values)."""
        dialect = self._dialect
        return sa_exc.DBAPIError.instance(
            sql, None, error, dialect.loaded_dbapi.Error,
            connection_invalidated=invalidated, dialect=dialect,
        )  # fmt: skip

    def _fetch_in_greenlet(self, compiled: _Compiled, values: dict[str, Any]) -> list[Any]:
        # Checkout, statement and checkin in one greenlet: one switch in and
        # out of it per await, and none per pool operation.
        dialect = self._dialect
        try:
            fairy = self._pool.connect()
        except dialect.loaded_dbapi.Error as error:
            raise self._wrapped(error) from None
        try:
            cursor = fairy.driver_connection.cursor()  # type: ignore[union-attr]
            await_only(cursor.execute(compiled.sql, values, prepare=True))
            rows: list[Any] = await_only(cursor.fetchall())
            if not compiled.described:
                compiled.learn(dialect, cursor.description)
        except dialect.loaded_dbapi.Error as error:
            disconnect = dialect.is_disconnect(error, fairy.dbapi_connection, None)
            if disconnect:
                # Every connection opened before this one is suspect too: the
                # pool replaces them all (as SQLAlchemy's own execute does).
                self._pool._invalidate(fairy, error)
            else:
                fairy.close()
            raise self._wrapped(error, disconnect, compiled.sql) from None
        except BaseException:
            # Cancelled mid-statement: the connection's state is unknown.
            fairy.invalidate()
            raise
        fairy.close()
        return rows

    async def dispose(self) -> None:
        if self._read_connections is not None:
            await self._read_connections.close()
        await self.engine.dispose()

    def forget(self) -> None:
        if self._read_connections is not None:
            self._read_connections.forget()
        self.engine.sync_engine.dispose(close=False)


class _ThreadDatabase:
    """A blocking driver (SQLite, or an :class:`sqlalchemy.Engine` passed in):
    each operation runs in one of the source's worker threads."""

    def __init__(self, engine: sa.Engine, workers: int) -> None:
        self.engine = engine
        self._reads = engine.execution_options(ablo_read=True)
        if engine.dialect.name == "postgresql":
            self._reads = self._reads.execution_options(isolation_level="AUTOCOMMIT")
        self._writes = engine.execution_options(ablo_write=True)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="ablo-sql")
        self._renewal = PoolRenewal(engine)

    def forget_statements(self) -> None:
        """Nothing is compiled here: SQLAlchemy's own cache keys on the tables."""

    def renew(self) -> None:
        """Replace the pooled connections (a PostgreSQL engine's may hold
        statements prepared before a served table changed)."""
        self._renewal.renew()

    async def read(self, work: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _run_read, self._reads, work, args)

    async def write(self, work: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _run_write, self._writes, work, args)

    async def fetch(self, statement: sa.Select[Any], params: Mapping[str, Any]) -> list[Any]:
        return await self.read(_fetch, statement, params)

    async def fetch_page(self, statement: sa.Select[Any]) -> Sequence[Any]:
        return await self.read(_all, statement)

    async def dispose(self) -> None:
        self.forget()

    def forget(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()


_Database = _LoopDatabase | _ThreadDatabase


# ------------------------------------------------------------ work on one connection


def _select_one(connection: sa.Connection) -> None:
    connection.exec_driver_sql("SELECT 1").close()


def _load(connection: sa.Connection, served: ServedModel, key: Any) -> Any:
    return connection.execute(served.load_statement, {"ablo_id": key}).first()


def _fetch(
    connection: sa.Connection, statement: sa.Select[Any], params: Mapping[str, Any]
) -> list[Any]:
    return list(connection.execute(statement, params).all())


def _all(connection: sa.Connection, statement: sa.Executable) -> Sequence[Any]:
    return connection.execute(statement).all()


def _reflect_models(
    connection: sa.Connection, specs: Mapping[str, ModelSpec], *, skip_without_id: bool
) -> tuple[dict[str, ServedModel], dict[str, str], list[str]]:
    """Each model of ``specs`` as its table stands: the served ones, why the
    others cannot be served, and the tables skipped for having no id column."""
    metadata = sa.MetaData()
    dialect = connection.dialect.name
    served: dict[str, ServedModel] = {}
    problems: dict[str, str] = {}
    skipped: list[str] = []
    for name, spec in specs.items():
        where = f"{spec.schema}.{spec.table}" if spec.schema else spec.table
        try:
            table = sa.Table(spec.table, metadata, schema=spec.schema, autoload_with=connection)
            if skip_without_id and "id" not in table.columns:
                skipped.append(spec.table)
                continue
            served[name] = ServedModel.reflect(name, spec, table, dialect)
        except sa_exc.NoSuchTableError:
            problems[name] = f"model {name!r}: table {where!r} does not exist"
        except ConfigError as error:
            problems[name] = str(error)
        except sa_exc.OperationalError as error:
            if spec.schema and "unknown database" in str(error.orig):
                problems[name] = (
                    f"model {name!r}: SQLite has no schema {spec.schema!r} (on SQLite a "
                    "schema is an attached database: leave `schema` out)"
                )
            else:
                raise
    return served, problems, skipped


def served_tables(connection: sa.Connection, models: ModelMap | None) -> list[sa.Table]:
    """The tables ``run`` would serve with ``models`` (every table with an id
    column without them), whether or not the ledger and outbox exist yet; a
    ConfigError names a map ``run`` would refuse."""
    specs = models or ModelMap.of_tables(sa.inspect(connection).get_table_names())
    served, problems, _ = _reflect_models(connection, specs, skip_without_id=models is None)
    if problems:
        raise ConfigError(next(iter(problems.values())))
    return [model.table for model in served.values()]


def _sqlite_variable_limit(connection: sa.Connection) -> int:
    raw = connection.connection.dbapi_connection
    limit: int = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # type: ignore[union-attr]
    return limit


class SQLSource(DataSource):
    """Serve tables of a SQLite or PostgreSQL database as Ablo models.

    ``SQLSource("postgresql://app@db/app", models=ModelMap.from_toml("models.toml"))``
    serves the mapped tables; without ``models`` every table is served under
    its own name. Subclass it to override one operation and let the adapter
    serve the rest (``return await super().list(model, query, ctx)``).

    Reflection happens in :meth:`prepare` (the CLI calls it at startup to
    fail fast) or, at the latest, on the first request.

    Health: :attr:`healthy` is ``False`` (and :attr:`last_error` says why)
    from the moment the database could not be reached until a request or
    :meth:`probe` succeeds again.

    ``pool_size`` bounds the connections: on PostgreSQL up to ``pool_size``
    for reads (see :mod:`.connections`) and as many through SQLAlchemy's
    pool for commits and probes.

    ``url`` may also be an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`
    (served on the event loop, every read through its pool) or an
    :class:`~sqlalchemy.Engine` (served in worker threads).
    """

    def __init__(
        self,
        url: str | sa.URL | sa.Engine | AsyncEngine,
        models: ModelMap | Mapping[str, Any] | None = None,
        *,
        page_size: int = 100,
        max_page_size: int = 1000,
        pool_size: int = DEFAULT_POOL_SIZE,
        statement_timeout: float | None = 30.0,
    ) -> None:
        if page_size < 1 or max_page_size < page_size:
            raise ConfigError("page_size must be at least 1 and at most max_page_size")
        if pool_size < 1:
            raise ConfigError("the database pool size must be at least 1")
        self._statement_timeout = statement_timeout
        self._database: _Database
        if isinstance(url, AsyncEngine):
            self._database = _LoopDatabase(url)
        elif isinstance(url, sa.Engine):
            self._database = _ThreadDatabase(url, pool_size)
        else:
            parsed = database_url(url)
            if parsed.get_backend_name() == "postgresql":
                async_engine = _create_postgres_async_engine(parsed, pool_size, statement_timeout)
                reads = ReadConnections(
                    _read_connector(async_engine, statement_timeout),
                    pool_size,
                    timeout=POOL_TIMEOUT_SECONDS,
                    recycle=POOL_RECYCLE_SECONDS,
                )
                self._database = _LoopDatabase(async_engine, reads)
            else:
                engine = create_database_engine(
                    parsed, pool_size=pool_size, max_overflow=0, must_exist=True
                )
                self._database = _ThreadDatabase(engine, pool_size)
        self.engine: sa.Engine | AsyncEngine = self._database.engine
        if models is not None and not isinstance(models, ModelMap):
            models = ModelMap.from_dict(models)
        self.model_map = models
        # Without a map, the names are known once the tables are reflected.
        self._model_names: ModelNames | None = None if models is None else models.names
        self.page_size = page_size
        self.max_page_size = max_page_size
        self._models: dict[str, ServedModel] | None = None
        self._prepare_lock: asyncio.Lock | None = None
        self._can_echo = self.engine.dialect.name == "postgresql"
        self._max_bound_values = MAX_BOUND_VALUES
        self._healthy = True
        self._last_error: str | None = None
        # After a served table changed (see .drift): the models that cannot be
        # served as mapped, and why; a problem with the ledger or outbox; and a
        # count of reflections, so that concurrent requests reflect once.
        self._unservable: dict[str, str] = {}
        self._schema_problem: str | None = None
        self._reflections = 0
        self._schema_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        url = shown_url(self.engine.url)
        return f"{type(self).__name__}({url!r})"

    # ------------------------------------------------------------ health

    @property
    def healthy(self) -> bool:
        """``False`` while the database is known to be unreachable."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        """Why the database was last found unreachable (no password, no SQL), or ``None``."""
        return self._last_error

    async def probe(self) -> None:
        """Ask the database for ``SELECT 1`` (reflecting the models first if
        that has not happened yet), and update :attr:`healthy`.

        The daemon calls it every few seconds (see ``DataSource.probe``):
        it returns when the database can serve and raises
        ``SourceError("database_unreachable")`` (or
        ``"source_adapter_misconfigured"``) with the reason, never the URL's
        password or SQL, when it cannot. While a served table has changed so
        that a model cannot be served as mapped (its table, or a mapped column,
        is gone), it reflects again and raises ``"source_schema_changed"``
        naming each such model, until they can be served again.
        """
        try:
            if self._models is None:
                await self._prepare_on_loop()
            else:
                await self._database.read(_select_one)
                if self._schema_problems() is not None:  # is it back? (the table, the column)
                    await self._reflect_after_change(self._reflections, renew=False)
        except ConfigError as error:
            self._unhealthy(str(error))
            raise SourceError("source_adapter_misconfigured", str(error), status=503) from None
        except sa_exc.SQLAlchemyError as error:
            self._unhealthy(describe_database_error(error))
            raise SourceError(
                "database_unreachable", describe_database_error(error), status=503
            ) from None
        except SourceError as error:  # reflecting again met the database down
            self._unhealthy(error.message)
            raise SourceError("database_unreachable", error.message, status=503) from None
        self._healthy, self._last_error = True, None
        problems = self._schema_problems()
        if problems is not None:
            # The database answers; some of what it serves does not (/readyz names it).
            raise SchemaChanged(problems)

    def _unhealthy(self, reason: str) -> None:
        self._healthy, self._last_error = False, reason

    # ------------------------------------------------------------ startup

    @property
    def models(self) -> Mapping[str, ServedModel]:
        """The served models (reflected by :meth:`prepare`; empty before)."""
        return self._models or {}

    def prepare(self) -> Mapping[str, ServedModel]:
        """Reflect the mapped tables and check the ledger and outbox exist.

        Call it before the event loop runs (the CLI does, at startup). Raises
        :class:`ConfigError` for a mistake in the map or the schema, and for
        a database that cannot work (refused login, no such database), and
        ``sqlalchemy.exc.OperationalError`` when the database is unreachable
        (then :attr:`healthy` is ``False`` until a request or :meth:`probe`
        succeeds). Inside a running event loop, use :meth:`probe` instead.
        """
        if self._models is not None:
            return self._models
        if isinstance(self._database, _LoopDatabase):
            # Reflection is not latency-bound: a short-lived synchronous engine
            # does it, so that the CLI can fail fast before the loop starts.
            url = self.engine.url.set(drivername="postgresql+psycopg")
            engine = sa.create_engine(
                url,
                poolclass=NullPool,
                connect_args=_postgres_connect_args(url, self._statement_timeout),
            )
            try:
                self._models = self._prepare_with(lambda: _run_read(engine, self._reflect, ()))
            finally:
                engine.dispose()
        else:
            reads = self._database._reads
            self._models = self._prepare_with(lambda: _run_read(reads, self._reflect, ()))
        return self._models

    def _prepare_with(
        self, reflect: Callable[[], dict[str, ServedModel]]
    ) -> dict[str, ServedModel]:
        try:
            models = reflect()
        except sa_exc.OperationalError as error:
            problem = configuration_problem(error, self.engine.url)
            if problem is not None:
                raise ConfigError(problem) from None
            self._unhealthy(describe_database_error(error))
            raise
        self._log_serving(models)
        return models

    async def _prepare_on_loop(self) -> dict[str, ServedModel]:
        if self._prepare_lock is None:
            self._prepare_lock = asyncio.Lock()
        async with self._prepare_lock:
            if self._models is None:
                models = await self._database.read(self._reflect)
                self._log_serving(models)
                self._models = models
        return self._models

    def _log_serving(self, models: Mapping[str, ServedModel]) -> None:
        self._healthy, self._last_error = True, None
        log.info(
            "serving %d model(s) from %s: %s",
            len(models),
            shown_url(self.engine.url),
            ", ".join(sorted(models)),
        )

    def _reflect(self, connection: sa.Connection) -> dict[str, ServedModel]:
        """Every model at startup, or a ConfigError naming the first that cannot be served."""
        dialect = connection.dialect.name
        inspector = sa.inspect(connection)
        verify_tables(inspector)
        if dialect == "sqlite":
            self._max_bound_values = min(MAX_BOUND_VALUES, _sqlite_variable_limit(connection) - 64)
        specs = self.model_map or ModelMap.of_tables(inspector.get_table_names())
        if not specs:
            raise ConfigError("the database has no tables to serve (create one, or pass --models)")
        # Without a map, a table is served by name only when it has an id.
        served, problems, skipped = _reflect_models(
            connection, specs, skip_without_id=self.model_map is None
        )
        if problems:
            raise ConfigError(next(iter(problems.values())))
        if skipped:
            log.warning(
                "not serving table(s) without an id column: %s (map one with --models: "
                '[models.NAME] table = "..." and [models.NAME.fields] id = "COLUMN")',
                ", ".join(sorted(skipped)),
            )
        if not served:
            raise ConfigError(
                "the database has no table with an id column to serve (create one, or map "
                "another column as the id with --models)"
            )
        # The dispatcher resolves aliases (a lowercased name) to these names
        # before authorize runs, so a hook that checks the name sees this one.
        self._model_names = ModelNames(
            {name: specs[name].typename for name in served},
            origin="the tables served (pass --models to serve them under other names)",
        )
        return served

    def _reflect_served(
        self, connection: sa.Connection
    ) -> tuple[dict[str, ServedModel], dict[str, str]]:
        """The models served since startup, as their tables stand now, and why
        any cannot be served any more (a table or a mapped column is gone)."""
        verify_tables(sa.inspect(connection))
        served = self._models or {}
        specs = self.model_map or ModelMap.of_tables(served)  # without a map: model = table
        reflected, problems, _ = _reflect_models(
            connection, {name: specs[name] for name in served}, skip_without_id=False
        )
        return reflected, problems

    def close(self) -> None:
        """Drop the pooled connections without waiting (use :meth:`aclose` in a loop)."""
        self._database.forget()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._database.dispose()

    def served_models(self) -> MaybeAwaitable[ModelNames]:
        """The names requests may use: the map's at once, else the tables' once reflected."""
        names = self._model_names
        return names if names is not None else self._reflected_names()

    async def _reflected_names(self) -> ModelNames:
        await self._reflected()
        assert self._model_names is not None
        return self._model_names

    async def _reflected(self) -> Mapping[str, ServedModel]:
        """The served models, reflected now if that has not happened yet."""
        models = self._models
        if models is None:  # not reflected yet (the database was down at startup)
            with _answers(), self._database_errors():
                try:
                    models = await self._prepare_on_loop()
                except ConfigError as error:
                    log.error("cannot serve: %s", error)
                    raise SourceError(
                        "source_adapter_misconfigured", str(error), status=500
                    ) from None
        return models

    async def _model(self, name: str) -> ServedModel:
        models = self._models or await self._reflected()
        model = models.get(name)
        if model is None:  # an alias, from a caller other than the dispatcher
            names = self._model_names
            assert names is not None
            declared = names.resolve(name)
            if declared is None or declared not in models:
                raise names.unknown(name)
            model = models[declared]
        return model

    async def _served(self, name: str) -> ServedModel:
        """The model for a request, unless its table changed so that it cannot be served."""
        served = await self._model(name)
        problem = self._unservable.get(served.name)
        if problem is not None:
            raise Unservable(
                f"{problem}: the table changed while being served; retry once it is fixed",
                model=served.name,
            )
        return served

    # ------------------------------------------------------------ schema changes

    async def _on_current_schema(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; if a served table changed under it, renew what was
        prepared, reflect again, and run it once more from the start (against
        the new reflection). A second change answers 503 ``source_schema_changed``."""
        reflections = self._reflections
        try:
            return await operation()
        except Unservable:
            raise
        except SchemaChanged:
            await self._reflect_after_change(reflections, renew=True)
        return await operation()

    async def _reflect_after_change(self, reflections: int, *, renew: bool) -> None:
        """Reflect the served models again, unless someone did since ``reflections``;
        ``renew`` first replaces every connection's prepared statements."""
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self._reflections != reflections or self._models is None:
                return  # another request did it while this one waited (or none was made yet)
            if renew:
                self._database.renew()
            with _answers(), self._database_errors():
                try:
                    models, problems = await self._database.read(self._reflect_served)
                except ConfigError as error:  # the ledger or the outbox is gone
                    if self._schema_problem != str(error):
                        log.error("cannot serve commits and events: %s", error)
                    self._schema_problem = str(error)
                    self._reflections += 1
                    return
            self._adopt(models, problems)
            self._reflections += 1

    def _adopt(self, models: Mapping[str, ServedModel], problems: Mapping[str, str]) -> None:
        """Serve a new reflection, saying once per model what changed."""
        old = self._models or {}
        if self._schema_problem is not None:
            log.info("the ledger and outbox are back: serving commits and events again")
            self._schema_problem = None
        dialect = self.engine.dialect
        adopted: dict[str, ServedModel] = {}
        for name, model in models.items():
            changes = describe_changes(old[name], model, dialect) if name in old else []
            if name in self._unservable:
                log.info("model %r can be served again (table %s)", name, model.table.fullname)
            elif changes:
                log.warning(
                    "model %r (table %s) changed: %s; serving it as it is now",
                    name, model.table.fullname, "; ".join(changes),
                )  # fmt: skip
            else:
                continue  # the same as before: keep it (and its compiled statements)
            adopted[name] = model
        if adopted:
            self._database.forget_statements()
        elif not problems and not self._unservable:
            log.info("a served table changed, but no served model did; statements prepared again")
        for name, problem in problems.items():
            if self._unservable.get(name) != problem:
                # The problem starts "model 'x' (table 'y'): ", said once here.
                detail = (
                    problem.split(": ", 1)[-1] if problem.startswith(f"model {name!r}") else problem
                )
                log.warning(
                    "cannot serve model %r any more: %s; it answers 503 %s until it can",
                    name, detail, SCHEMA_CHANGED,
                )  # fmt: skip
        # A model that cannot be served keeps its last reflection (it is not
        # used): requests for it still find it, and answer 503, not 400.
        self._models = {**old, **adopted}
        self._unservable = dict(problems)

    def _schema_problems(self) -> str | None:
        """What the probe reports while a served table cannot be served as mapped."""
        problems = list(self._unservable.values())
        if self._schema_problem is not None:
            problems.insert(0, self._schema_problem)
        return "; ".join(problems) if problems else None

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        with self._database_errors():
            try:
                result = await attempt()
            except sa_exc.DBAPIError as error:
                if not error.connection_invalidated:
                    raise
                # A pooled connection died (the server restarted, a proxy
                # dropped it): the pool is renewed; try once on a fresh one.
                # Safe for a commit too: had the first attempt committed, the
                # ledger would answer this one as a replay.
                log.info("a pooled database connection was closed; retrying on a new one")
                result = await attempt()
        self._healthy = True
        return result

    async def _read(self, work: Callable[..., T], *args: Any) -> T:
        return await self._retrying(lambda: self._database.read(work, *args))

    async def _write(self, work: Callable[..., T], *args: Any) -> T:
        return await self._retrying(lambda: self._database.write(work, *args))

    async def _fetch(self, statement: sa.Select[Any], params: Mapping[str, Any]) -> list[Any]:
        return await self._retrying(lambda: self._database.fetch(statement, params))

    @contextmanager
    def _database_errors(self) -> Iterator[None]:
        try:
            yield
        except sa_exc.OperationalError as error:
            if _refused_as(error) == "source_database_unavailable":  # not the request's fault
                self._unhealthy(describe_database_error(error))
            raise
        except (sa_exc.InterfaceError, sa_exc.TimeoutError) as error:
            self._unhealthy(describe_database_error(error))
            raise

    # ------------------------------------------------------------ reads

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        return await self._on_current_schema(lambda: self._load(model, id))

    async def _load(self, model: str, id: str) -> dict[str, Any] | None:
        served = await self._served(model)
        key = to_column_value(served.id, "id", id)
        with _answers(served):
            rows = await self._fetch(served.load_statement, {"ablo_id": key})
        return to_json_row(served.values_to_fields(rows[0])) if rows else None

    async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:
        return await self._on_current_schema(lambda: self._list(model, query))

    async def _list(self, model: str, query: ListQuery) -> ListPage:
        served = await self._served(model)
        plan = plan_list(served, query, self.page_size, self.max_page_size, self._max_bound_values)
        if plan.limit == 0:
            return ListPage(rows=[])
        with _answers(served):
            found = await self._retrying(lambda: self._database.fetch_page(plan.statement))
        page = found[: plan.limit]
        more = len(found) > plan.limit
        fields = served.values_to_fields
        return ListPage(
            # One conversion for the whole page: JSON-ready values, NaN as null.
            rows=to_json_value([fields(row) for row in page]),
            next_cursor=plan.next_cursor(served, page[-1]) if more else None,
        )

    async def events(
        self, cursor: str | None, limit: int | None, ctx: RequestContext
    ) -> EventsPage:
        after = _outbox_cursor(cursor)
        count = min(self.page_size if limit is None else limit, self.max_page_size)
        return await self._on_current_schema(lambda: self._events(cursor, after, count))

    async def _events(self, cursor: str | None, after: int, count: int) -> EventsPage:
        if self._schema_problem is not None:
            raise Unservable(self._schema_problem)
        rows: list[Any] = []
        with _answers():
            if count > 0:
                rows = await self._fetch(_EVENTS, {"after": after, "count": count})
            if not rows and after > 0:
                await self._check_issued(after)
        events = [_event(dict(zip(_OUTBOX_COLUMNS, row, strict=True))) for row in rows]
        # The last delivered cursor, or the one given: the engine always has
        # a position to resume from and never sees an event twice.
        return EventsPage(events=events, next_cursor=events[-1]["cursor"] if events else cursor)

    async def _check_issued(self, after: int) -> None:
        """Refuse a cursor past every cursor the outbox issued: the engine would
        wait there for events that, in a rewound outbox, come under lower cursors.
        Asked only when no event follows ``after`` (a page of events proves it)."""
        (last,) = (await self._fetch(last_issued_cursor(self.engine.dialect.name), {}))[0]
        if after > (last or 0):
            raise SourceError(
                "source_cursor_invalid",
                "the events cursor is past the last event this source issued (was the "
                "outbox recreated, truncated or restored from an older backup?)",
            )

    # ------------------------------------------------------------ commit

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        if commit.echo is not None and not self._can_echo:
            raise SourceError(
                "source_commit_echo_not_supported",
                f"a {self.engine.dialect.name} database cannot emit a PostgreSQL WAL echo",
                status=409,
            )
        if commit.echo is not None and commit.intent_hash is None:
            raise SourceError(
                "idempotency_conflict",
                "a commit with a WAL echo must carry the engine's intentHash",
                status=409,
            )
        if not commit.correlation_id:  # the dispatcher refuses these first; direct callers too
            raise SourceError(
                "source_commit_requires_correlation_id", "a commit needs a correlationId"
            )
        return await self._on_current_schema(lambda: self._commit(commit))

    async def _commit(self, commit: CommitRequest) -> CommitResult:
        # Resolve every model before the transaction: a bad name costs no lock.
        models = [await self._served(op.model) for op in commit.operations]
        if self._schema_problem is not None:
            raise Unservable(self._schema_problem)
        with _answers(*models):
            rows = await self._write(self._commit_in, commit, models)
        return CommitResult(rows=rows)

    def _commit_in(
        self, connection: sa.Connection, commit: CommitRequest, models: Sequence[ServedModel]
    ) -> Sequence[Any]:
        key = commit.correlation_id
        assert key is not None
        intent = commit.effective_intent_hash
        organization = commit.scope.organization_id if commit.scope else None
        if not self._reserve(connection, key, intent):
            return self._replay(connection, key, commit.replayable_intent_hashes)
        applied = [
            self._apply(connection, served, op)
            for op, served in zip(commit.operations, models, strict=True)
        ]
        rows = [row for row, _ in applied]
        occurred_at = _now_ms()
        # One event per operation that changed a row: deleting a row that is
        # already gone succeeds, but nothing happened to tell the engine about.
        # Event ids keep the operation's index, so they stay stable on replay.
        events = [
            {
                "id": f"{key}:{index}",
                "model": op.model,
                "entity_id": str(row.get("id", "")),
                "type": op.type,
                "data": None if op.type == "DELETE" else row,
                "organization_id": organization,
                "correlation_id": key,
                "transaction_id": op.transaction_id,
                "occurred_at": occurred_at,
            }
            for index, (op, (row, changed)) in enumerate(
                zip(commit.operations, applied, strict=True)
            )
            if changed
        ]
        if events and connection.dialect.name == "postgresql":
            # Cursors come from a sequence when the row is inserted, not
            # when the transaction commits: without this lock a reader
            # could see cursor 8 committed while 7 is still in flight,
            # move past it, and never see 7. Held from here to COMMIT
            # only (the row changes above stay concurrent).
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(OUTBOX_LOCK)))
        if events:
            connection.execute(outbox.insert(), events)
        connection.execute(
            ledger.update().where(ledger.c.client_tx_id == key).values(response=rows)
        )
        if commit.echo is not None:
            connection.execute(
                sa.select(sa.func.pg_logical_emit_message(True, ECHO_PREFIX, commit.echo.payload))
            )
        return rows

    def _reserve(self, connection: sa.Connection, key: str, intent: str) -> bool:
        insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        now = dt.datetime.now(dt.UTC)
        statement = (
            insert(ledger)
            .values(
                client_tx_id=key,
                response=[],
                request_hash=intent,
                expires_at=now + LEDGER_RETENTION,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=[ledger.c.client_tx_id])
            .returning(ledger.c.client_tx_id)
        )
        return connection.execute(statement).first() is not None

    def _replay(self, connection: sa.Connection, key: str, intents: Sequence[str]) -> Sequence[Any]:
        now = dt.datetime.now(dt.UTC)
        found = connection.execute(
            sa.select(
                ledger.c.request_hash,
                ledger.c.response,
                (ledger.c.expires_at <= now).label("expired"),
            ).where(ledger.c.client_tx_id == key)
        ).first()
        if found is None:  # reserved, then rolled back between our two statements
            raise SourceError(
                "source_commit_retry", "a concurrent commit with this correlationId rolled back; retry",
                status=503,
            )  # fmt: skip
        if found.request_hash not in intents:
            raise SourceError(
                "idempotency_conflict",
                "this correlationId was already used with a different intent"
                if found.request_hash is not None
                else "this correlationId predates intent hashing and cannot be replayed safely",
                status=409,
            )
        if found.expired:
            raise SourceError(
                "idempotency_key_expired",
                "this correlationId has expired and cannot be executed again safely",
                status=409,
            )
        response = found.response
        if not isinstance(response, list):
            raise SourceError(
                "idempotency_conflict", "the stored answer for this correlationId is corrupt",
                status=409,
            )  # fmt: skip
        return response

    def _apply(
        self, connection: sa.Connection, served: ServedModel, op: Operation
    ) -> tuple[dict[str, Any], bool]:
        """The row as it stands after ``op``, and whether ``op`` changed anything."""
        raw_id = op.id if op.id is not None else (op.input or {}).get("id")
        if not isinstance(raw_id, str) or not raw_id:
            raise SourceError(
                "source_operation_id_required", f"{op.type} on {op.model!r} needs an id"
            )
        key = to_column_value(served.id, "id", raw_id)
        values: dict[str, Any] = {}
        for name, value in (op.input or {}).items():
            if name != "id":  # the row id is the operation's, never rewritten
                column = column_for(served, name, "input")
                values[column.name] = to_column_value(column, name, value)
        table, match = served.table, served.id == key

        if op.type == "CREATE":
            values[served.id.name] = key
            return self._one(connection, served, table.insert().values(values), key), True
        if op.type == "DELETE":
            found = self._returning(connection, served, table.delete().where(match), key)
            # Deleting what is already gone is done, not an error.
            return (found, True) if found is not None else ({"id": raw_id}, False)

        if op.type in ("ARCHIVE", "UNARCHIVE"):
            archived_at = served.archived_at
            if archived_at is None:
                raise SourceError(
                    "source_archive_not_supported",
                    f"model {op.model!r} has no archivedAt column to {op.type.lower()}",
                    model=op.model,
                )
            values[archived_at.name] = _archive_stamp(archived_at) if op.type == "ARCHIVE" else None
        if values:
            found = self._returning(
                connection, served, table.update().where(match).values(values), key
            )
        else:
            found = self._select(connection, served, key)
        if found is None:
            raise SourceError(
                "source_row_not_found",
                f"{op.model} {raw_id!r} does not exist",
                status=404,
                model=op.model,
            )
        return found, True

    def _returning(
        self, connection: sa.Connection, served: ServedModel, statement: Any, key: Any
    ) -> dict[str, Any] | None:
        if _supports_returning(connection, statement):
            row = connection.execute(statement.returning(*served.selected)).first()
            return None if row is None else to_json_row(served.values_to_fields(row))
        if statement.is_delete:
            before = self._select(connection, served, key)
            connection.execute(statement)
            return before
        if connection.execute(statement).rowcount == 0:
            return None
        return self._select(connection, served, key)

    def _one(
        self, connection: sa.Connection, served: ServedModel, statement: Any, key: Any
    ) -> dict[str, Any]:
        row = self._returning(connection, served, statement, key)
        assert row is not None  # an INSERT that did not raise wrote its row
        return row

    def _select(
        self, connection: sa.Connection, served: ServedModel, key: Any
    ) -> dict[str, Any] | None:
        row = _load(connection, served, key)
        return None if row is None else to_json_row(served.values_to_fields(row))


_EVENTS: Final = (
    sa.select(outbox)
    .where(outbox.c.cursor > sa.bindparam("after"))
    .order_by(outbox.c.cursor)
    .limit(sa.bindparam("count"))
)
_OUTBOX_COLUMNS: Final = tuple(column.name for column in outbox.columns)


def _supports_returning(connection: sa.Connection, statement: Any) -> bool:
    dialect = connection.dialect
    if statement.is_insert:
        return bool(dialect.insert_returning)
    if statement.is_delete:
        return bool(dialect.delete_returning)
    return bool(dialect.update_returning)


def _archive_stamp(column: sa.Column[Any]) -> Any:
    if python_type(column) in (int, float):
        return _now_ms()  # an epoch-milliseconds column
    return dt.datetime.now(dt.UTC)


_MAX_CURSOR: Final = (1 << 63) - 1


def _outbox_cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if (
        not cursor.isascii()
        or not cursor.isdigit()
        or len(cursor) > 19
        or int(cursor) > _MAX_CURSOR
    ):
        raise SourceError(
            "source_cursor_invalid", "the events cursor must be a cursor this source issued"
        )
    return int(cursor)


def _event(row: Mapping[Any, Any]) -> dict[str, Any]:
    event = {
        "id": row["id"],
        "model": row["model"],
        "entityId": row["entity_id"],
        "type": row["type"],
        "data": row["data"],
        "organizationId": row["organization_id"],
        "clientTxId": row["client_tx_id"],
        "correlationId": row["correlation_id"],
        "transactionId": row["transaction_id"],
        "occurredAt": row["occurred_at"],
        "cursor": str(row["cursor"]),
    }
    return {key: value for key, value in event.items() if value is not None}


_QUERY_CANCELED: Final = "57014"  # PostgreSQL's statement_timeout / cancel SQLSTATE
_UNAVAILABLE: Final = "the database is unavailable; retry"
_UNSENDABLE: Final = "a value cannot be sent to the database (e.g. a NUL character in text)"


@contextmanager
def _answers(*models: ServedModel) -> Iterator[None]:
    """Database failures as answers: the caller's mistake, a conflict, or retry later.

    Whether a failure is the caller's mistake is read from the SQLSTATE class
    on PostgreSQL and from the message on SQLite. No answer carries SQL text
    or a bound value: PostgreSQL's messages quote the rejected input, so an
    answer names the condition and the schema objects (column, constraint,
    type, and the field of ``models`` whose value was refused) from the
    error's fields instead. The full message stays in the log.
    """
    try:
        yield
    except SourceError:
        raise
    except sa_exc.StatementError as error:
        if isinstance(error, sa_exc.DBAPIError):
            raise _refusal(error, models) from None
        # A value the driver could not bind (e.g. an integer past 64 bits).
        log.warning("a value could not be bound: %s", type(error.orig).__name__)
        raise SourceError(
            "source_value_invalid", "a value does not fit its column's type"
        ) from None
    except sa_exc.TimeoutError as error:
        # Every pooled connection stayed busy: the database is slow or the
        # pool too small for the load, not this request's fault.
        log.warning("no database connection became free: %s", error)
        raise SourceError(
            "source_database_unavailable",
            "every database connection stayed busy; retry the request",
            status=503,
        ) from None
    except sa_exc.SQLAlchemyError as error:
        log.error("the SQL adapter failed: %s", type(error).__name__, exc_info=True)
        raise SourceError(
            "source_adapter_error", "the SQL adapter failed this request", status=500
        ) from None


# SQLSTATE classes (the first two characters) that are the request's fault.
_CALLER_CLASSES: Final = {
    "22": ("source_value_invalid", 400),  # data exception: a value the type refuses
    "23": ("source_constraint_violation", 409),  # integrity constraint violation
    "42": ("source_query_invalid", 400),  # a name or privilege the request asks for
    "54": ("source_value_invalid", 400),  # program limit exceeded: too large, too long
}
# What SQLite says, in messages, for a request it cannot take.
_SQLITE_CALLER: Final = (
    ("constraint failed", "source_constraint_violation", 409),
    ("datatype mismatch", "source_value_invalid", 400),
    ("pattern too complex", "source_where_invalid", 400),
    ("too many sql variables", "source_where_invalid", 400),
    ("string or blob too big", "source_value_invalid", 400),
    ("too many terms", "source_where_invalid", 400),
)


def _refused_as(error: sa_exc.DBAPIError) -> str:
    """The error code the request gets for ``error`` (without logging it)."""
    original = error.orig
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate == _QUERY_CANCELED:
        return "source_database_timeout"
    if is_schema_change(error):
        return SCHEMA_CHANGED
    if sqlstate:
        caller = _CALLER_CLASSES.get(sqlstate[:2])
        if caller is not None:
            return caller[0]
    else:
        text = str(original).lower()
        for phrase, code, _ in _SQLITE_CALLER:
            if phrase in text:
                return code
    if isinstance(error, sa_exc.DataError):
        return "source_value_invalid"
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return "source_database_unavailable"
    return "source_database_error"


def _refusal(error: sa_exc.DBAPIError, models: Sequence[ServedModel] = ()) -> SourceError:
    original = error.orig
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate == _QUERY_CANCELED:
        return SourceError(
            "source_database_timeout",
            "the database cancelled a statement that ran past its statement timeout",
            status=504,
        )
    if is_schema_change(error):
        # Each request's own line is DEBUG: the reflection that follows logs
        # what changed, once per model.
        log.debug("a served table changed: %s", describe_database_error(error))
        return SchemaChanged("a table this source serves changed while the request ran; retry")
    if sqlstate:
        caller = _CALLER_CLASSES.get(sqlstate[:2])
        if caller is not None:
            log.info("the database refused a request: %s", describe_database_error(error))
            field = _refused_field(error, models)
            if field is None:
                return SourceError(caller[0], _condition(error), status=caller[1])
            return SourceError(
                caller[0], f"field {field!r}: {_condition(error)}", status=caller[1], field=field
            )
    else:
        text = str(original).lower()
        for phrase, code, status in _SQLITE_CALLER:
            if phrase in text:
                log.info("the database refused a request: %s", describe_database_error(error))
                # SQLite's messages name columns and constraints, never values.
                return SourceError(code, describe_error(str(original)), status=status)
    if isinstance(error, sa_exc.DataError):
        # Refused by the driver before it reached the server (no SQLSTATE):
        # a value it cannot send, such as a NUL character in text.
        log.info("the driver refused a value: %s", describe_database_error(error))
        return SourceError("source_value_invalid", _UNSENDABLE, status=400)
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        log.warning("database unavailable: %s", describe_database_error(error))
        return SourceError("source_database_unavailable", _UNAVAILABLE, status=503)
    log.error("database error: %s", describe_database_error(error))
    return SourceError("source_database_error", "the database failed this request", status=500)


# How SQLAlchemy names bound values in the SQL it hands psycopg: %(name)s.
_PLACEHOLDER: Final = re.compile(r"%\(([^)]*)\)s")
# Where PostgreSQL says which bound value it could not read (the CONTEXT line
# "unnamed portal parameter $2"; its words may be translated, the $2 is not).
_PARAMETER_NUMBER: Final = re.compile(r"\$(\d+)")
# A comparison's value is bound as the column's key plus a number (mood_1).
_ANONYMOUS_SUFFIX: Final = re.compile(r"_\d+$")
_LOAD_ID_BIND: Final = "ablo_id"  # see ServedModel.load_statement


def _refused_field(error: sa_exc.DBAPIError, models: Sequence[ServedModel]) -> str | None:
    """The field whose value PostgreSQL refused while binding it (an enum
    label it does not have, an address that is not one), or None.

    The error names the parameter by number only; psycopg numbers the
    statement's placeholders in order of first appearance, and SQLAlchemy
    names each after the column it is written to or compared with.
    """
    context = getattr(getattr(error.orig, "diag", None), "context", None)
    number = _PARAMETER_NUMBER.search(context or "")
    if number is None or not models or not error.statement:
        return None
    names = list(dict.fromkeys(_PLACEHOLDER.findall(error.statement)))
    index = int(number.group(1)) - 1
    if not 0 <= index < len(names):
        return None
    name = names[index]
    if name == _LOAD_ID_BIND:
        return "id"
    for candidate in (name, _ANONYMOUS_SUFFIX.sub("", name)):
        for served in models:
            field = served.fields.get(candidate)
            if field is not None:
                return field
    return None


def _condition(error: sa_exc.DBAPIError) -> str:
    """What PostgreSQL refused, from the error's fields: never its message, which
    quotes the rejected input."""
    original = error.orig
    diag = getattr(original, "diag", None)
    named = [
        f"{what} {value}"
        for what, value in (
            ("column", getattr(diag, "column_name", None)),
            ("constraint", getattr(diag, "constraint_name", None)),
            ("type", getattr(diag, "datatype_name", None)),
            ("table", getattr(diag, "table_name", None)),
        )
        if value
    ]
    condition = type(original).__name__
    sqlstate = getattr(original, "sqlstate", "")
    return f"the database refused the request: {condition} (SQLSTATE {sqlstate})" + (
        f" on {', '.join(named)}" if named else ""
    )


def describe_database_error(error: Exception) -> str:
    """The database's own one-line reason, for the operator's log and checks
    (never the SQL; PostgreSQL may quote a rejected value, so answers use
    :func:`_condition` instead)."""
    original = getattr(error, "orig", None)
    diag = getattr(original, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:
        return str(primary)[:300]
    return describe_error(original if original is not None else error)
