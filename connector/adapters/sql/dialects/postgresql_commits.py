"""PostgreSQL commits on the adapter's own psycopg connections.

Through SQLAlchemy's execution layer a commit cost about 3 ms of CPU, most
of it compiling the ledger reservation and each row statement again, the
greenlet around the session and the execution context of every statement
(``bench/sql.py``). Here a commit runs on a connection of its own small
pool (:class:`~..connections.ReadConnections`, in autocommit, the
transaction begun and ended explicitly), every statement compiled once by
SQLAlchemy and kept (the row statements by operation type, model and set of
columns, bounded like the list shapes), and run by psycopg as a prepared
statement. The statements after the rows (the commit-order lock, the outbox
events, the ledger's answer, the echo and ``COMMIT``) go in one pipeline:
one round trip, so the lock is held for the least time.

What stays the adapter's (:class:`~..source.SQLSource`): the flow of a
commit, its values and its answers. What a failure looks like is
SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`, with the statement's SQL
and never its values, as on the other paths: a connection that died
mid-commit says ``connection_invalidated`` and the commit is tried once
more (the ledger makes that safe).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql

from ..connections import ReadConnections
from ..execution import _UNSEEN, PageShapes, _Compiled, _process_rows
from ..tables import ledger, outbox

if TYPE_CHECKING:
    from ..models import ServedModel

__all__ = ["Commits", "CommitTransaction"]

_BEGIN: Final = "BEGIN ISOLATION LEVEL READ COMMITTED"
_RESERVATION: Final = ("client_tx_id", "response", "request_hash", "expires_at", "created_at")
# What an operation does to its row, as the statement that does it.
INSERT: Final = "insert"
UPDATE: Final = "update"
DELETE: Final = "delete"
SELECT: Final = "select"


def _compiled(
    dialect: sa.Dialect,
    statement: Any,
    columns: Sequence[sa.types.TypeEngine[Any]],
    column_keys: Sequence[str] | None = None,
) -> _Compiled | None:
    """``statement`` compiled for psycopg, or None when SQLAlchemy completes
    its SQL only when it runs it."""
    compiled = statement.compile(
        dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None
    )
    if compiled.post_compile_params or compiled.literal_execute_params:
        return None
    escaped = getattr(compiled, "escaped_bind_names", None) or {}
    binds = []
    for bind, name in compiled.bind_names.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            binds.append((escaped.get(name, name), processor))
    return _Compiled(
        compiled.string, dict(compiled.params), tuple(binds), tuple(columns), escaped=dict(escaped)
    )


class Commits:
    """Commit transactions on the adapter's own connections, and the
    statements they run, compiled once."""

    def __init__(
        self,
        dialect: sa.Dialect,
        connections: ReadConnections,
        shapes: PageShapes,
        lost: Callable[[Any, BaseException], bool],
        lock: int,
        echo_prefix: str,
    ) -> None:
        self._dialect = dialect
        self.connections = connections
        self.shapes = shapes
        self._lost = lost
        self._lock = lock
        self._echo_prefix = echo_prefix
        self._fixed: dict[str, _Compiled] = {}

    def forget_statements(self) -> None:
        self.shapes.clear()
        self._fixed.clear()

    def _fixed_statement(self, name: str) -> _Compiled:
        found = self._fixed.get(name)
        if found is not None:
            return found
        dialect = self._dialect
        if name == "reserve":
            statement: Any = (
                postgresql.insert(ledger)
                .on_conflict_do_nothing(index_elements=[ledger.c.client_tx_id])
                .returning(ledger.c.client_tx_id)
            )
            made = _compiled(dialect, statement, [ledger.c.client_tx_id.type], _RESERVATION)
        elif name == "replay":
            statement = sa.select(
                ledger.c.request_hash,
                ledger.c.response,
                (ledger.c.expires_at <= sa.bindparam("now", type_=ledger.c.expires_at.type)).label(
                    "expired"
                ),
            ).where(ledger.c.client_tx_id == sa.bindparam("ablo_key"))
            made = _compiled(dialect, statement, [c.type for c in statement.selected_columns])
        elif name == "answer":
            statement = ledger.update().where(ledger.c.client_tx_id == sa.bindparam("ablo_key"))
            made = _compiled(dialect, statement, [], ["response"])
        elif name == "lock":
            statement = sa.select(sa.func.pg_advisory_xact_lock(self._lock))
            made = _compiled(dialect, statement, [sa.types.NullType()])
        elif name == "echo":
            statement = sa.select(
                sa.func.pg_logical_emit_message(
                    True, self._echo_prefix, sa.bindparam("payload", type_=sa.Text)
                )
            )
            made = _compiled(dialect, statement, [sa.types.NullType()])
        elif name == "captured":
            statement = sa.select(
                sa.func.set_config("ablo.commit", sa.bindparam("context", type_=sa.Text), True)
            )
            made = _compiled(dialect, statement, [sa.Text()])
        else:
            raise KeyError(name)
        assert made is not None
        self._fixed[name] = made
        return made

    def _outbox_statement(self, keys: tuple[str, ...]) -> _Compiled:
        name = "outbox:" + ",".join(keys)
        found = self._fixed.get(name)
        if found is None:
            found = _compiled(self._dialect, outbox.insert(), [], keys)
            assert found is not None
            self._fixed[name] = found
        return found

    def row_statement(self, served: ServedModel, kind: str, columns: tuple[str, ...]) -> Any:
        """The compiled statement of an operation on ``served`` writing
        ``columns`` (sorted names), or None when it must go through SQLAlchemy."""
        key = (kind, served.name, columns)
        shape = self.shapes.get(key)
        if shape is _UNSEEN:
            shape = self._row_statement(served, kind, columns)
            self.shapes.put(key, shape)
        return shape

    def _row_statement(
        self, served: ServedModel, kind: str, columns: tuple[str, ...]
    ) -> _Compiled | None:
        table = served.table
        types = [column.type for column in served.selected]
        if "ablo_id" in columns or any(table.c[name].key != name for name in columns):
            return None
        match = served.id == sa.bindparam("ablo_id")
        statement: Any
        if kind == INSERT:
            statement = table.insert().returning(*served.selected)
        elif kind == UPDATE:
            statement = table.update().where(match).returning(*served.selected)
        elif kind == DELETE:
            statement = table.delete().where(match).returning(*served.selected)
        else:
            statement = served.load_statement
        try:
            return _compiled(self._dialect, statement, types, columns)
        except sa_exc.CompileError:
            return None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[CommitTransaction]:
        """A transaction begun on a pooled connection: committed by
        :meth:`CommitTransaction.finish`, rolled back if the block raises."""
        pool = self.connections
        driver_error = self._dialect.loaded_dbapi.Error
        try:
            connection, opened = await pool.acquire()
        except driver_error as error:
            raise self._wrapped(error) from None
        transaction = CommitTransaction(self, connection)
        try:
            yield transaction
        except driver_error as error:
            lost = self._lost(connection, error)
            if not lost:  # (after a failed COMMIT, a ROLLBACK only warns)
                lost = not await _rolled_back(connection, driver_error)
            pool.release(connection, opened, failed=lost, lost=lost)
            raise self._wrapped(error, lost, transaction.statement) from None
        except Exception:
            # The commit's own refusal (a row not found, a replay): undo its writes.
            ok = await _rolled_back(connection, driver_error)
            pool.release(connection, opened, failed=not ok, lost=not ok)
            raise
        except BaseException:
            # Cancelled mid-statement: the connection's state is unknown.
            pool.release(connection, opened, failed=True)
            raise
        if transaction.begun and not transaction.committed:
            # Left without a COMMIT (a replay only read the ledger): end it
            # here, so that no connection goes back to the pool in a transaction.
            ok = await _rolled_back(connection, driver_error)
            pool.release(connection, opened, failed=not ok, lost=not ok)
            return
        pool.release(connection, opened)

    def _wrapped(
        self, error: Exception, invalidated: bool = False, sql: str | None = None
    ) -> sa_exc.StatementError:
        dialect = self._dialect
        return sa_exc.DBAPIError.instance(
            sql, None, error, dialect.loaded_dbapi.Error,
            connection_invalidated=invalidated, dialect=dialect,
        )  # fmt: skip


async def _rolled_back(connection: Any, driver_error: type[Exception]) -> bool:
    try:
        await connection.execute("ROLLBACK")
    except driver_error:
        return False
    return True


class CommitTransaction:
    """One commit's transaction: BEGIN with its first statement, then each
    statement as one round trip, and the last ones together."""

    def __init__(self, commits: Commits, connection: Any) -> None:
        self._commits = commits
        self._connection = connection
        self.statement: str | None = None  # the SQL that was running, for a failure
        self.begun = False
        self.committed = False

    async def run(self, shape: _Compiled, values: Mapping[str, Any]) -> list[Any]:
        """``shape`` with ``values`` bound: its rows, processed."""
        connection = self._connection
        cursor = connection.cursor()
        self.statement = shape.sql
        if self.begun:
            await cursor.execute(shape.sql, _bound(shape, values), prepare=True)
        else:  # BEGIN and the first statement in one round trip
            self.begun = True
            async with connection.pipeline():
                await connection.execute(_BEGIN)
                await cursor.execute(shape.sql, _bound(shape, values), prepare=True)
        if cursor.description is None:
            return []
        rows: list[Any] = await cursor.fetchall()
        if not shape.described:
            shape.learn(self._commits._dialect, cursor.description)
        return _process_rows(shape, rows)

    async def reserve(self, row: Mapping[str, Any]) -> bool:
        return bool(await self.run(self._commits._fixed_statement("reserve"), row))

    async def replayed(self, key: str, now: Any) -> Any:
        found = await self.run(
            self._commits._fixed_statement("replay"), {"ablo_key": key, "now": now}
        )
        return found[0] if found else None

    async def captured(self, context: str) -> None:
        await self.run(self._commits._fixed_statement("captured"), {"context": context})

    async def row(self, shape: _Compiled, values: Mapping[str, Any]) -> Any:
        found = await self.run(shape, values)
        return found[0] if found else None

    async def finish(
        self,
        events: Sequence[Mapping[str, Any]],
        key: str,
        rows: Sequence[Any],
        echo: str | None,
    ) -> None:
        """Take the commit-order lock (only if there are events), write the
        events, the ledger's answer and the echo, and COMMIT: one pipeline."""
        commits = self._commits
        statements: list[tuple[_Compiled, Mapping[str, Any]]] = []
        if events:
            statements.append((commits._fixed_statement("lock"), {}))
            for event in events:
                statements.append((commits._outbox_statement(tuple(event)), event))
        statements.append((commits._fixed_statement("answer"), {"ablo_key": key, "response": rows}))
        if echo is not None:
            statements.append((commits._fixed_statement("echo"), {"payload": echo}))
        connection = self._connection
        self.statement = None
        async with connection.pipeline():
            for shape, values in statements:
                await connection.cursor().execute(shape.sql, _bound(shape, values), prepare=True)
            await connection.execute("COMMIT")
        self.committed = True


def _bound(shape: _Compiled, values: Mapping[str, Any]) -> dict[str, Any]:
    bound = {**shape.defaults, **values}
    escaped = shape.escaped
    if escaped:
        bound = {escaped.get(name, name): value for name, value in bound.items()}
    for name, processor in shape.bind_processors:
        bound[name] = processor(bound[name])
    return bound
