"""How does an operation run? On the event loop, or in worker threads.

A dialect chooses one of two ways when the source is built, and the adapter
asks it for reads and writes without knowing which:

- :class:`LoopDatabase`: an asyncio driver (psycopg 3 on PostgreSQL). Each
  operation is one piece of synchronous SQLAlchemy code inside one greenlet
  (:func:`sqlalchemy.util.greenlet_spawn`), so its statements cost no thread
  and no hop between threads. Reads (a load by id, a list page, a page of
  events) skip SQLAlchemy's execution layer: their statements are compiled
  once and run on a driver connection directly, which halves the CPU a read
  costs (see bench/sql.py). What differs between drivers there (how a
  statement runs on a raw connection, how a dead one looks) is the
  dialect's (:class:`LoopDriver`).
- :class:`ThreadDatabase`: a blocking driver (SQLite's, or an
  :class:`sqlalchemy.Engine` passed in); each operation runs in one of the
  source's worker threads.

Reads run in autocommit mode where the database has one: one statement, one
round trip, no ``BEGIN`` or ``ROLLBACK``.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only, greenlet_spawn

from .connections import ReadConnections
from .drift import PoolRenewal

if TYPE_CHECKING:
    from .commits import OwnCommits
    from .models import ServedModel
    from .query import ListPlan

__all__ = [
    "Database",
    "LoopDatabase",
    "LoopDriver",
    "PageShapes",
    "Serving",
    "ThreadDatabase",
    "run_read",
    "run_write",
    "select_one",
]

T = TypeVar("T")

_UNSEEN: Final[Any] = object()  # a shape not compiled yet (None: one SQLAlchemy must run)


@dataclass(frozen=True, slots=True)
class Serving:
    """How a source serves: the settings of its connections and compiled shapes."""

    pool_size: int
    statement_timeout: float | None
    pool_timeout: float
    pool_recycle: float
    max_page_shapes: int
    max_page_shape_bytes: int


class LoopDriver(Protocol):
    """What :class:`LoopDatabase` asks of a dialect's asyncio driver."""

    #: Execution options of a commit's connection (its isolation level).
    write_options: ClassVar[Mapping[str, Any]]

    async def run_read(
        self,
        connection: Any,
        sql: str,
        values: Mapping[str, Any] | Sequence[Any],
        describe: bool,
    ) -> tuple[list[Any], Sequence[Any] | None]:
        """Run one compiled read on a driver connection (its values by name,
        or in placeholder order): its rows and, if ``describe``, its cursor's
        description (psycopg builds it anew each time it is asked for)."""
        ...

    def run_write(
        self, engine: sa.Engine, work: Callable[[sa.Connection], T], args: tuple[Any, ...]
    ) -> T:
        """Run ``work`` in one transaction on ``engine``, committed if it returns."""
        ...

    def connection_lost(self, connection: Any, error: BaseException) -> bool:
        """Whether a driver connection that just failed with ``error`` is gone
        (not just its statement)."""
        ...

    def reflection_engine(self, url: sa.URL, statement_timeout: float | None) -> sa.Engine:
        """A short-lived synchronous engine that reflects before the event loop runs."""
        ...


def run_read(engine: sa.Engine, work: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.connect() as connection:
        return work(connection, *args)


def run_write(engine: sa.Engine, work: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.begin() as connection:
        return work(connection, *args)


@dataclass(slots=True)
class _Compiled:
    """A statement compiled once for the driver, with what binding and reading it takes.

    It keeps no request's values: a long-lived statement's ``defaults`` are
    its own, and a list page's shape has placeholders only, bound from each
    request's plan.
    """

    sql: str
    defaults: dict[str, Any]
    bind_processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    columns: tuple[sa.types.TypeEngine[Any], ...]
    # A driver with positional placeholders (%s): the names in their order.
    positions: tuple[str, ...] | None = None
    # Known after the first execution (some depend on the type the driver reports).
    # The columns whose values the driver's type needs converted, by position.
    result_processors: tuple[tuple[int, Callable[[Any], Any]], ...] | None = None
    described: bool = False
    # Names SQLAlchemy escaped in the SQL (a column name with a space): as given -> as written.
    escaped: dict[str, str] | None = None

    def parameters(self, values: dict[str, Any]) -> dict[str, Any] | tuple[Any, ...]:
        """``values`` as the driver takes them: by name, or in placeholder order."""
        if self.positions is None:
            return values
        return tuple(values[name] for name in self.positions)

    def learn(self, dialect: sa.Dialect, description: Sequence[Any]) -> None:
        # A description entry is a sequence whose second item is the type code.
        processors = tuple(
            column.dialect_impl(dialect).result_processor(dialect, described[1])
            for column, described in zip(self.columns, description, strict=True)
        )
        converted = tuple((i, p) for i, p in enumerate(processors) if p is not None)
        self.result_processors = converted or None
        self.described = True


_Parameters = dict[str, Any] | tuple[Any, ...]


def _positions(compiled: Any) -> tuple[str, ...] | None:
    return tuple(compiled.positiontup) if compiled.positional else None


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


class PageShapes:
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
    processed = []
    for row in rows:
        values = list(row)
        for index, processor in processors:
            values[index] = processor(values[index])
        processed.append(values)
    return processed


class LoopDatabase:
    """An asyncio driver on the event loop: one greenlet per operation, no threads.

    Reads (a load by id, a list page, a page of events) skip SQLAlchemy's
    execution layer: their statements are compiled once, and run on a driver
    connection directly (as prepared statements where the driver has them),
    which halves the CPU a read costs (see bench/sql.py). The connection
    comes from ``reads`` (see :mod:`.connections`) when given, else from
    SQLAlchemy's pool (an engine passed in by the user, whose connect
    arguments we cannot repeat).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        driver: LoopDriver,
        serving: Serving,
        reads: ReadConnections | None = None,
        commits: OwnCommits[Any] | None = None,
    ) -> None:
        self.engine = engine
        # Commits on connections of their own, where the dialect has them
        # (else through SQLAlchemy: see write).
        self._commits = commits
        self._driver = driver
        self._statement_timeout = serving.statement_timeout
        self._read_connections = reads
        self._reads = engine.sync_engine
        self._writes = engine.sync_engine.execution_options(**driver.write_options)
        self._pool = engine.sync_engine.pool
        self._dialect = engine.sync_engine.dialect
        self._compiled: dict[sa.Select[Any], _Compiled] = {}
        # List pages by shape; None: a shape SQLAlchemy must run (see fetch_page).
        self._shapes = PageShapes(serving.max_page_shapes, serving.max_page_shape_bytes)
        self._renewal = PoolRenewal(engine.sync_engine)

    def reflect_before_loop(self, work: Callable[[sa.Connection], T]) -> T:
        """Run ``work`` (a reflection) before the event loop runs. Reflection
        is not latency-bound: a short-lived synchronous engine does it, so
        that the CLI can fail fast before the loop starts."""
        engine = self._driver.reflection_engine(self.engine.url, self._statement_timeout)
        try:
            return run_read(engine, work, ())
        finally:
            engine.dispose()

    def forget_statements(self) -> None:
        """Drop the compiled statements: their result processors follow the
        column types they were compiled for, and their models may be gone."""
        self._compiled.clear()
        self._shapes.clear()
        if self._commits is not None:
            self._commits.forget_statements()

    def renew(self) -> None:
        """Forget what was prepared before a served table changed: compiled
        statements and every connection's prepared statements."""
        self.forget_statements()
        self._renewal.renew()
        if self._read_connections is not None:
            self._read_connections.renew()
        if self._commits is not None:
            self._commits.connections.renew()

    async def read(self, work: Callable[..., T], *args: Any) -> T:
        return await greenlet_spawn(run_read, self._reads, work, args)

    async def write(self, work: Callable[..., T], *args: Any) -> T:
        return await greenlet_spawn(self._driver.run_write, self._writes, work, args)

    def _compiled_for(self, statement: sa.Select[Any]) -> _Compiled:
        """A long-lived statement (a model's load, a page of events), compiled."""
        compiled = statement.compile(dialect=self._dialect)
        return _Compiled(
            compiled.string,
            dict(compiled.params),
            self._bind_processors(compiled),
            tuple(column.type for column in statement.selected_columns),
            positions=_positions(compiled),
        )

    def _shape_for(self, statement: sa.Select[Any], names: Any) -> _Compiled | None:
        """The compiled form of every list page of ``statement``'s shape, or None
        for a shape SQLAlchemy must run: one whose SQL is only complete at
        execution (an IN list expanded then), or whose placeholders are not
        exactly the plan's values (``names``)."""
        dialect = self._dialect
        compiled = statement.compile(dialect=dialect)
        if _completed_at_execution(compiled) or set(compiled.bind_names.values()) != set(names):
            return None
        return _Compiled(
            compiled.string,
            {},
            self._bind_processors(compiled),
            tuple(column.type for column in statement.selected_columns),
            positions=_positions(compiled),
        )

    def _bind_processors(self, compiled: Any) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
        dialect = self._dialect
        binds = []
        for bind, name in compiled.bind_names.items():  # name: as the SQL text has it
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                binds.append((name, processor))
        return tuple(binds)

    async def fetch_page(self, plan: ListPlan) -> Sequence[Any]:
        """The rows of a list page.

        On the read connections, as a prepared statement, when its shape
        allows: compiled once per shape (:attr:`ListPlan.key`), its values
        bound from the plan, with no SQLAlchemy statement built per request.
        A shape whose SQL is only complete at execution (an IN list
        expanded then) goes through SQLAlchemy.
        """
        if self._read_connections is None:
            return await self.read(_fetch, plan.statement(), plan.values)
        if self._dialect.server_version_info is None:
            await self._set_up_dialect()
        key = plan.key
        shape = self._shapes.get(key)
        if shape is _UNSEEN:
            shape = self._shape_for(plan.statement(), plan.values)
            self._shapes.put(key, shape)
        if shape is None:
            return await self.read(_fetch, plan.statement(), plan.values)
        return await self._run(shape, dict(plan.values))

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
        parameters = compiled.parameters(values)
        pool = self._read_connections
        if pool is None:
            rows = await greenlet_spawn(self._fetch_in_greenlet, compiled, parameters)
        else:
            rows = await self._fetch_directly(pool, compiled, parameters)
        return _process_rows(compiled, rows)

    async def _fetch_directly(
        self, pool: ReadConnections, compiled: _Compiled, values: _Parameters
    ) -> list[Any]:
        dialect = self._dialect
        driver_error = dialect.loaded_dbapi.Error
        try:
            connection, opened = await pool.acquire()
        except driver_error as error:
            raise self._wrapped(error) from None
        try:
            described = compiled.described
            rows, description = await self._driver.run_read(
                connection, compiled.sql, values, not described
            )
            if not described:
                assert description is not None
                compiled.learn(dialect, description)
        except driver_error as error:
            # In autocommit a failed statement leaves the connection usable,
            # unless the failure was the connection itself.
            disconnect = self._driver.connection_lost(connection, error)
            pool.release(connection, opened, failed=disconnect, lost=disconnect)
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

    def _fetch_in_greenlet(self, compiled: _Compiled, values: _Parameters) -> list[Any]:
        # Checkout, statement and checkin in one greenlet: one switch in and
        # out of it per await, and none per pool operation.
        dialect = self._dialect
        try:
            fairy = self._pool.connect()
        except dialect.loaded_dbapi.Error as error:
            raise self._wrapped(error) from None
        try:
            described = compiled.described
            rows, description = await_only(
                self._driver.run_read(fairy.driver_connection, compiled.sql, values, not described)
            )
            if not described:
                assert description is not None
                compiled.learn(dialect, description)
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

    async def commits(self) -> OwnCommits[Any] | None:
        """Where commits run on connections of their own (None: through :meth:`write`)."""
        if self._commits is not None and self._dialect.server_version_info is None:
            await self._set_up_dialect()
        return self._commits

    async def dispose(self) -> None:
        if self._read_connections is not None:
            await self._read_connections.close()
        if self._commits is not None:
            await self._commits.connections.close()
        await self.engine.dispose()

    def forget(self) -> None:
        if self._read_connections is not None:
            self._read_connections.forget()
        if self._commits is not None:
            self._commits.connections.forget()
        self.engine.sync_engine.dispose(close=False)


class ThreadDatabase:
    """A blocking driver (SQLite, or an :class:`sqlalchemy.Engine` passed in):
    each operation runs in one of the source's worker threads.

    ``read_options`` are the execution options of a read (autocommit where
    the database has it); ``ablo_read`` and ``ablo_write`` tell a dialect's
    connection hooks which of the two a connection serves.
    """

    def __init__(
        self,
        engine: sa.Engine,
        workers: int,
        read_options: Mapping[str, Any] | None = None,
        write: Callable[[sa.Engine, Callable[..., Any], tuple[Any, ...]], Any] | None = None,
    ) -> None:
        self.engine = engine
        self._run_write = write or run_write
        self._reads = engine.execution_options(ablo_read=True)
        if read_options:
            self._reads = self._reads.execution_options(**read_options)
        self._writes = engine.execution_options(ablo_write=True)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="ablo-sql")
        self._renewal = PoolRenewal(engine)

    def forget_statements(self) -> None:
        """Nothing is compiled here: SQLAlchemy's own cache keys on the tables."""

    async def commits(self) -> None:
        """Commits run through :meth:`write`."""
        return None

    def renew(self) -> None:
        """Replace the pooled connections (a PostgreSQL engine's may hold
        statements prepared before a served table changed)."""
        self._renewal.renew()

    def reflect_before_loop(self, work: Callable[[sa.Connection], T]) -> T:
        """Run ``work`` (a reflection) now, on a read connection."""
        return run_read(self._reads, work, ())

    async def read(self, work: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, run_read, self._reads, work, args)

    async def write(self, work: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_write, self._writes, work, args)

    async def fetch(self, statement: sa.Select[Any], params: Mapping[str, Any]) -> list[Any]:
        return await self.read(_fetch, statement, params)

    async def fetch_page(self, plan: ListPlan) -> Sequence[Any]:
        return await self.read(_fetch, plan.statement(), plan.values)

    async def dispose(self) -> None:
        self.forget()

    def forget(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()


Database = LoopDatabase | ThreadDatabase


# ------------------------------------------------------------ work on one connection


def select_one(connection: sa.Connection) -> None:
    connection.exec_driver_sql("SELECT 1").close()


def load_row(
    connection: sa.Connection, served: ServedModel, key: Any, *, lock: bool = False
) -> Any:
    """A row by id; ``lock`` takes its row lock (FOR UPDATE, where the database has one)."""
    statement = served.load_statement.with_for_update() if lock else served.load_statement
    return connection.execute(statement, {"ablo_id": key}).first()


def _fetch(
    connection: sa.Connection, statement: sa.Select[Any], params: Mapping[str, Any]
) -> list[Any]:
    return list(connection.execute(statement, params).all())
