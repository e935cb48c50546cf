"""Commits on the adapter's own driver connections, whatever the database.

Through SQLAlchemy's execution layer a commit costs milliseconds of CPU:
compiling the ledger reservation and each row statement again, the greenlet
around the session, the execution context of every statement
(``bench/sql.py``). A dialect that has its own commit path
(``dialects/postgresql_commits.py``, ``dialects/mysql_commits.py``) runs a
commit on a connection of a small pool of its own
(:class:`~.connections.ReadConnections`), every statement compiled once by
SQLAlchemy and kept: the row statements by operation type, model and set of
columns, bounded like the list shapes.

The contract with :class:`~.source.SQLSource`, which owns the flow of a
commit, its values and its answers: :meth:`OwnCommits.row_statement` gives
an operation's statement (None: that commit goes through SQLAlchemy,
whole), and :meth:`OwnCommits.transaction` a transaction with ``reserve``,
``replayed``, ``captured``, ``row`` and ``finish``, in that order. A
failure looks like SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`, with
the statement's SQL and never its values, as on the other paths: a
connection that died mid-commit says ``connection_invalidated`` and the
commit is tried once more (the ledger makes that safe).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from .connections import ReadConnections
from .execution import _UNSEEN, PageShapes, _Compiled, _positions
from .tables import ledger, outbox

if TYPE_CHECKING:
    from .models import ServedModel

__all__ = ["INSERT", "UPDATE", "DELETE", "SELECT", "OwnCommits", "OwnTransaction", "bound"]

# What an operation does to its row, as the adapter names it (SQLSource._operation).
INSERT: Final = "insert"
UPDATE: Final = "update"
DELETE: Final = "delete"
SELECT: Final = "select"
# The ledger row that reserves a commit's key (SQLSource._reservation).
RESERVATION: Final = ("client_tx_id", "response", "request_hash", "expires_at", "created_at")


def compiled(
    dialect: sa.Dialect,
    statement: Any,
    columns: Sequence[sa.types.TypeEngine[Any]],
    column_keys: Sequence[str] | None = None,
) -> _Compiled | None:
    """``statement`` compiled for the driver, or None when SQLAlchemy
    completes its SQL only when it runs it."""
    made = statement.compile(
        dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None
    )
    if made.post_compile_params or made.literal_execute_params:
        return None
    escaped = getattr(made, "escaped_bind_names", None) or {}
    positions = _positions(made)
    if escaped and positions is not None:
        return None  # a positional driver would need the escaped names mapped back
    binds = []
    for bind, name in made.bind_names.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            binds.append((escaped.get(name, name), processor))
    return _Compiled(
        made.string,
        dict(made.params),
        tuple(binds),
        tuple(columns),
        positions=positions,
        escaped=dict(escaped),
    )


def bound(shape: _Compiled, values: Mapping[str, Any]) -> dict[str, Any] | tuple[Any, ...]:
    """``values`` (by column or parameter name) as the driver takes them for ``shape``."""
    given = {**shape.defaults, **values}
    escaped = shape.escaped
    if escaped:
        given = {escaped.get(name, name): value for name, value in given.items()}
    for name, processor in shape.bind_processors:
        given[name] = processor(given[name])
    return shape.parameters(given)


class OwnTransaction(Protocol):
    """What :meth:`OwnCommits.transaction` hands the adapter, and what it
    reads back to end the transaction."""

    statement: str | None  # the SQL that was running, for a failure
    begun: bool
    committed: bool

    async def reserve(self, row: Mapping[str, Any]) -> bool: ...

    async def replayed(self, key: str, now: Any) -> Any: ...

    async def captured(self, context: str) -> None: ...

    async def row(self, shape: Any, values: Mapping[str, Any]) -> Any: ...

    async def finish(
        self,
        events: Sequence[Mapping[str, Any]],
        key: str,
        rows: Sequence[Any],
        echo: str | None,
    ) -> None: ...


Transaction = TypeVar("Transaction", bound=OwnTransaction)


class OwnCommits(Generic[Transaction]):
    """Commit transactions on a dialect's own connections, and the
    statements they run, compiled once. A dialect says how a transaction
    runs (:meth:`_begin`), how it is undone (:meth:`_rolled_back`) and what a
    connection must give back after a commit (:meth:`_released`)."""

    #: Whether a commit that writes a captured table may run here (its
    #: triggers need the commit's context set and, on some databases, ended).
    captures: ClassVar[bool] = True

    def __init__(
        self,
        dialect: sa.Dialect,
        connections: ReadConnections,
        shapes: PageShapes,
        lost: Callable[[Any, BaseException], bool],
    ) -> None:
        self._dialect = dialect
        self.connections = connections
        self.shapes = shapes
        self._lost = lost
        self._fixed: dict[str, _Compiled] = {}

    def forget_statements(self) -> None:
        self.shapes.clear()
        self._fixed.clear()

    def fixed_statement(self, name: str) -> _Compiled:
        """One of the statements every commit may run (the ledger's, the
        lock's), compiled the first time it is asked for."""
        found = self._fixed.get(name)
        if found is None:
            found = self._fixed[name] = self._fixed_statement(name)
        return found

    def _fixed_statement(self, name: str) -> _Compiled:
        """The statements every database writes alike; a dialect adds its own
        (the reservation, the lock) and asks here for the rest."""
        dialect = self._dialect
        if name == "replay":  # a ledger row's stored answer, and whether it expired
            statement: Any = sa.select(
                ledger.c.request_hash,
                ledger.c.response,
                (ledger.c.expires_at <= sa.bindparam("now", type_=ledger.c.expires_at.type)).label(
                    "expired"
                ),
            ).where(ledger.c.client_tx_id == sa.bindparam("ablo_key"))
            made = compiled(dialect, statement, [c.type for c in statement.selected_columns])
        elif name == "answer":
            statement = ledger.update().where(ledger.c.client_tx_id == sa.bindparam("ablo_key"))
            made = compiled(dialect, statement, [], ["response"])
        else:
            raise KeyError(name)
        assert made is not None
        return made

    def outbox_statement(self, keys: tuple[str, ...]) -> _Compiled:
        """The outbox INSERT of an event with ``keys``."""
        name = "outbox:" + ",".join(keys)
        found = self._fixed.get(name)
        if found is None:
            made = compiled(self._dialect, outbox.insert(), [], keys)
            assert made is not None
            found = self._fixed[name] = made
        return found

    def row_statement(self, served: ServedModel, kind: str, columns: tuple[str, ...]) -> Any:
        """The compiled statement of an operation on ``served`` writing
        ``columns`` (sorted names), or None when it must go through SQLAlchemy."""
        key = (kind, served.name, columns)
        shape = self.shapes.get(key)
        if shape is _UNSEEN:
            table = served.table
            if "ablo_id" in columns or any(table.c[name].key != name for name in columns):
                shape = None  # a name the statement's own placeholders use
            else:
                try:
                    shape = self._row_statement(served, kind, columns)
                except sa_exc.CompileError:
                    shape = None
            self.shapes.put(key, shape)
        return shape

    def _row_statement(self, served: ServedModel, kind: str, columns: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def _begin(self, connection: Any) -> Transaction:
        raise NotImplementedError

    async def _rolled_back(self, transaction: Transaction) -> bool:
        """Undo ``transaction`` (and what its session still holds): whether
        the connection may serve again."""
        raise NotImplementedError

    async def _released(self, transaction: Transaction) -> bool:
        """After a COMMIT: whether the connection may serve again."""
        return True

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction on a pooled connection: committed by its ``finish``,
        rolled back if the block raises."""
        pool = self.connections
        driver_error = self._dialect.loaded_dbapi.Error
        try:
            connection, opened = await pool.acquire()
        except driver_error as error:
            raise self._wrapped(error) from None
        transaction = self._begin(connection)
        # Given back on every way out, once. A cancellation (a request past
        # its deadline) can land in the rollback too: the connection, in an
        # unknown state, is closed, which also ends what its session holds.
        reusable = lost = False
        try:
            try:
                yield transaction
            except driver_error as error:
                lost = self._lost(connection, error)
                if not lost:  # (after a failed COMMIT, a ROLLBACK only warns)
                    lost = not await self._rolled_back(transaction)
                reusable = not lost
                raise self._wrapped(error, lost, transaction.statement) from None
            except Exception:
                # The commit's own refusal (a row not found, a replay): undo its writes.
                reusable = await self._rolled_back(transaction)
                lost = not reusable
                raise
            if transaction.begun and not transaction.committed:
                # Left without a COMMIT (a replay only read the ledger): end it
                # here, so that no connection goes back to the pool in a transaction.
                reusable = await self._rolled_back(transaction)
            else:
                reusable = await self._released(transaction)
            lost = not reusable
        finally:
            pool.release(connection, opened, failed=not reusable, lost=lost)

    def _wrapped(
        self, error: Exception, invalidated: bool = False, sql: str | None = None
    ) -> sa_exc.StatementError:
        dialect = self._dialect
        return sa_exc.DBAPIError.instance(
            sql, None, error, dialect.loaded_dbapi.Error,
            connection_invalidated=invalidated, dialect=dialect,
        )  # fmt: skip
