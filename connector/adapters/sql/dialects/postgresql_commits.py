"""PostgreSQL commits on the adapter's own psycopg connections (see ..commits).

Each statement runs as a prepared statement, on a connection in autocommit
whose transaction is begun and ended explicitly: ``BEGIN`` goes with the
first statement, and the statements after the rows (the commit-order lock,
the outbox events, the ledger's answer, the echo and ``COMMIT``) go in one
pipeline: one round trip, so the lock is held for the least time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ..commits import (
    DELETE,
    INSERT,
    RESERVATION,
    UPDATE,
    OwnCommits,
    bound,
    compiled,
)
from ..connections import ReadConnections
from ..execution import PageShapes, _Compiled, _process_rows
from ..tables import ledger

if TYPE_CHECKING:
    from ..models import ServedModel

__all__ = ["Commits", "CommitTransaction"]

_BEGIN: Final = "BEGIN ISOLATION LEVEL READ COMMITTED"


class Commits(OwnCommits["CommitTransaction"]):
    """Commit transactions on the adapter's own psycopg connections."""

    def __init__(
        self,
        dialect: sa.Dialect,
        connections: ReadConnections,
        shapes: PageShapes,
        lost: Any,
        lock: int,
        echo_prefix: str,
    ) -> None:
        super().__init__(dialect, connections, shapes, lost)
        self._lock = lock
        self._echo_prefix = echo_prefix

    def _fixed_statement(self, name: str) -> _Compiled:
        dialect = self._dialect
        if name == "reserve":
            statement: Any = (
                postgresql.insert(ledger)
                .on_conflict_do_nothing(index_elements=[ledger.c.client_tx_id])
                .returning(ledger.c.client_tx_id)
            )
            made = compiled(dialect, statement, [ledger.c.client_tx_id.type], RESERVATION)
        elif name == "lock":
            statement = sa.select(sa.func.pg_advisory_xact_lock(self._lock))
            made = compiled(dialect, statement, [sa.types.NullType()])
        elif name == "echo":
            statement = sa.select(
                sa.func.pg_logical_emit_message(
                    True, self._echo_prefix, sa.bindparam("payload", type_=sa.Text)
                )
            )
            made = compiled(dialect, statement, [sa.types.NullType()])
        elif name == "captured":
            statement = sa.select(
                sa.func.set_config("ablo.commit", sa.bindparam("context", type_=sa.Text), True)
            )
            made = compiled(dialect, statement, [sa.Text()])
        else:
            return super()._fixed_statement(name)
        assert made is not None
        return made

    def _row_statement(
        self, served: ServedModel, kind: str, columns: tuple[str, ...]
    ) -> _Compiled | None:
        table = served.table
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
        types = [column.type for column in served.selected]
        return compiled(self._dialect, statement, types, columns)

    def _begin(self, connection: Any) -> CommitTransaction:
        return CommitTransaction(self, connection)

    async def _rolled_back(self, transaction: CommitTransaction) -> bool:
        try:
            await transaction.connection.execute("ROLLBACK")
        except self._dialect.loaded_dbapi.Error:
            return False
        return True


class CommitTransaction:
    """One commit's transaction: BEGIN with its first statement, then each
    statement as one round trip, and the last ones together."""

    def __init__(self, commits: Commits, connection: Any) -> None:
        self._commits = commits
        self.connection = connection
        self.statement: str | None = None  # the SQL that was running, for a failure
        self.begun = False
        self.committed = False

    async def run(self, shape: _Compiled, values: Mapping[str, Any]) -> list[Any]:
        """``shape`` with ``values`` bound: its rows, processed."""
        connection = self.connection
        cursor = connection.cursor()
        self.statement = shape.sql
        if self.begun:
            await cursor.execute(shape.sql, bound(shape, values), prepare=True)
        else:  # BEGIN and the first statement in one round trip
            self.begun = True
            async with connection.pipeline():
                await connection.execute(_BEGIN)
                await cursor.execute(shape.sql, bound(shape, values), prepare=True)
        if not shape.columns:  # (psycopg builds a description anew each time it is asked)
            return []
        rows: list[Any] = await cursor.fetchall()
        if not shape.described:
            shape.learn(self._commits._dialect, cursor.description)
        return _process_rows(shape, rows)

    async def reserve(self, row: Mapping[str, Any]) -> bool:
        return bool(await self.run(self._commits.fixed_statement("reserve"), row))

    async def replayed(self, key: str, now: Any) -> Any:
        found = await self.run(
            self._commits.fixed_statement("replay"), {"ablo_key": key, "now": now}
        )
        return found[0] if found else None

    async def captured(self, context: str) -> None:
        await self.run(self._commits.fixed_statement("captured"), {"context": context})

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
            statements.append((commits.fixed_statement("lock"), {}))
            for event in events:
                statements.append((commits.outbox_statement(tuple(event)), event))
        statements.append((commits.fixed_statement("answer"), {"ablo_key": key, "response": rows}))
        if echo is not None:
            statements.append((commits.fixed_statement("echo"), {"payload": echo}))
        connection = self.connection
        self.statement = None
        async with connection.pipeline():
            for shape, values in statements:
                await connection.cursor().execute(shape.sql, bound(shape, values), prepare=True)
            await connection.execute("COMMIT")
        self.committed = True
