"""MySQL and MariaDB commits on the adapter's own asyncmy connections (see ..commits).

A connection of this pool runs with autocommit off and READ COMMITTED set
once, so a transaction begins with its first statement and costs no
``BEGIN``. MySQL's protocol has no pipeline: each statement is a round trip,
the same ones SQLAlchemy's path runs, less its per-statement CPU.

- The ledger reservation is a plain ``INSERT``; a duplicate key (1062) means
  another commit holds the key, and InnoDB undoes only that statement.
- A row's statement returns the row where the server can (MariaDB's
  ``INSERT``/``DELETE … RETURNING``); otherwise an ``UPDATE`` or ``INSERT``
  is followed by reading the row back, and a ``DELETE`` is preceded by
  reading it under its row lock (``FOR UPDATE``).
- The events are written under the commit-order lock (``GET_LOCK``), which
  belongs to the session: it is released after ``COMMIT`` or ``ROLLBACK``,
  and a connection that cannot release it is closed (closing frees it).
- A commit that writes a captured table keeps SQLAlchemy's path: its
  triggers need ``@ablo_commit`` set and the commit's staged rows moved
  before its own events (see ``MySQL.end_captured_commit``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

import sqlalchemy as sa

from ....errors import SourceError
from ..commits import DELETE, INSERT, RESERVATION, UPDATE, OwnCommits, bound, compiled
from ..connections import ReadConnections
from ..execution import PageShapes, _Compiled, _process_rows
from ..tables import ledger

if TYPE_CHECKING:
    from ..models import ServedModel

__all__ = ["MySQLCommits"]

log = logging.getLogger("connector.sql")

_DUPLICATE_KEY: Final = 1062


@dataclass(frozen=True, slots=True)
class _RowSteps:
    """An operation's statements: the one that writes (or reads) the row,
    and how the row as it stands after it is found."""

    statement: _Compiled
    returns_row: bool  # the statement itself returns the row (RETURNING, or a SELECT)
    read_before: _Compiled | None = None  # a DELETE's row, locked, before it goes
    read_after: _Compiled | None = None  # an INSERT's or UPDATE's row, read back

    @property
    def sql(self) -> str:
        """Every statement's SQL (what the shape cache counts as its size)."""
        parts = (self.read_before, self.statement, self.read_after)
        return ";".join(part.sql for part in parts if part is not None)


class MySQLCommits(OwnCommits["MySQLTransaction"]):
    """Commit transactions on the adapter's own asyncmy connections."""

    captures: ClassVar[bool] = False

    def __init__(
        self,
        dialect: sa.Dialect,
        connections: ReadConnections,
        shapes: PageShapes,
        lost: Any,
        lock_name: str,
        lock_wait_seconds: int,
    ) -> None:
        super().__init__(dialect, connections, shapes, lost)
        self._lock_name = lock_name
        self._lock_wait_seconds = lock_wait_seconds

    def _fixed_statement(self, name: str) -> _Compiled:
        dialect = self._dialect
        if name == "reserve":
            made = compiled(dialect, ledger.insert(), [], RESERVATION)
        elif name == "lock":
            made = _Compiled(
                f"SELECT GET_LOCK({self._lock_name}, {int(self._lock_wait_seconds)})",
                {}, (), (sa.types.NullType(),), positions=(),
            )  # fmt: skip
        elif name == "release":
            made = _Compiled(f"DO RELEASE_LOCK({self._lock_name})", {}, (), (), positions=())
        else:
            return super()._fixed_statement(name)
        assert made is not None
        return made

    def _row_statement(
        self, served: ServedModel, kind: str, columns: tuple[str, ...]
    ) -> _RowSteps | None:
        dialect = self._dialect
        table = served.table
        types = [column.type for column in served.selected]
        match = served.id == sa.bindparam("ablo_id")
        read = compiled(dialect, served.load_statement, types)
        if read is None:
            return None
        write: _Compiled | None
        if kind == INSERT:
            if dialect.insert_returning:
                write = compiled(
                    dialect, table.insert().returning(*served.selected), types, columns
                )
                return None if write is None else _RowSteps(write, returns_row=True)
            write = compiled(dialect, table.insert(), [], columns)
            return None if write is None else _RowSteps(write, False, read_after=read)
        if kind == UPDATE:
            write = compiled(dialect, table.update().where(match), [], columns)
            return None if write is None else _RowSteps(write, False, read_after=read)
        if kind == DELETE:
            if dialect.delete_returning:
                statement = table.delete().where(match).returning(*served.selected)
                write = compiled(dialect, statement, types)
                return None if write is None else _RowSteps(write, returns_row=True)
            locked = compiled(dialect, served.load_statement.with_for_update(), types)
            write = compiled(dialect, table.delete().where(match), [])
            if write is None or locked is None:
                return None
            return _RowSteps(write, False, read_before=locked)
        return _RowSteps(read, returns_row=True)

    def _begin(self, connection: Any) -> MySQLTransaction:
        return MySQLTransaction(self, connection)

    async def _rolled_back(self, transaction: MySQLTransaction) -> bool:
        try:
            await transaction.connection.rollback()
        except self._dialect.loaded_dbapi.Error:
            return False
        return await self._released(transaction)

    async def _released(self, transaction: MySQLTransaction) -> bool:
        if not transaction.locked:
            return True
        try:
            await transaction.execute(self.fixed_statement("release"), {})
        except self._dialect.loaded_dbapi.Error:
            # The lock is the session's: one that may still hold it must not
            # serve again. Closing it frees the lock in the server.
            log.warning("the outbox lock could not be released; closing its connection")
            return False
        transaction.locked = False
        return True


class MySQLTransaction:
    """One commit's transaction: a round trip per statement, the events
    under the commit-order lock, then COMMIT."""

    def __init__(self, commits: MySQLCommits, connection: Any) -> None:
        self._commits = commits
        self.connection = connection
        self.statement: str | None = None  # the SQL that was running, for a failure
        self.begun = False
        self.committed = False
        self.locked = False  # this session holds the commit-order lock

    async def execute(self, shape: _Compiled, values: Mapping[str, Any]) -> tuple[list[Any], int]:
        """``shape`` with ``values`` bound: its rows, processed, and the rows it matched."""
        self.statement = shape.sql
        self.begun = True
        async with self.connection.cursor() as cursor:
            matched = await cursor.execute(shape.sql, bound(shape, values))
            if cursor.description is None:
                return [], matched
            rows: list[Any] = list(await cursor.fetchall())
            if not shape.described:
                shape.learn(self._commits._dialect, cursor.description)
            return _process_rows(shape, rows), matched

    async def reserve(self, row: Mapping[str, Any]) -> bool:
        try:
            await self.execute(self._commits.fixed_statement("reserve"), row)
        except self._commits._dialect.loaded_dbapi.IntegrityError as error:
            if error.args and error.args[0] == _DUPLICATE_KEY:
                return False  # committed by another commit, which this INSERT waited for
            raise
        return True

    async def replayed(self, key: str, now: Any) -> Any:
        found, _ = await self.execute(
            self._commits.fixed_statement("replay"), {"ablo_key": key, "now": now}
        )
        return found[0] if found else None

    async def captured(self, context: str) -> None:
        raise AssertionError("commits to captured tables go through SQLAlchemy on MySQL")

    async def row(self, steps: _RowSteps, values: Mapping[str, Any]) -> Any:
        key = {"ablo_id": values["ablo_id"]}
        if steps.read_before is not None:
            before, _ = await self.execute(steps.read_before, key)
            if not before:
                # Nothing to delete, and nothing to lock under READ COMMITTED:
                # a DELETE now could remove a row committed since, with no event.
                return None
            await self.execute(steps.statement, values)
            return before[0]
        found, matched = await self.execute(steps.statement, values)
        if steps.returns_row:
            return found[0] if found else None
        if matched == 0:
            return None  # an UPDATE of no row (the connection counts matched rows)
        assert steps.read_after is not None
        after, _ = await self.execute(steps.read_after, key)
        return after[0] if after else None

    async def finish(
        self,
        events: Sequence[Mapping[str, Any]],
        key: str,
        rows: Sequence[Any],
        echo: str | None,
    ) -> None:
        """Write the ledger's answer, take the commit-order lock (only if there
        are events), then write the events, COMMIT and release the lock in one
        round trip: the lock is held for the least time."""
        assert echo is None  # refused before a MySQL commit starts
        commits = self._commits
        await self.execute(commits.fixed_statement("answer"), {"ablo_key": key, "response": rows})
        if not events:
            self.statement = "COMMIT"
            await self.connection.commit()
            self.committed = True
            return
        # Held from the moment the server may grant it: a rollback after any
        # failure from here on releases it (releasing a lock not held is a no-op).
        self.locked = True
        acquired, _ = await self.execute(commits.fixed_statement("lock"), {})
        if not acquired or acquired[0][0] != 1:
            raise SourceError(
                "source_database_timeout",
                "the commit waited too long for the outbox's commit-order lock",
                status=504,
            )
        async with self.connection.cursor() as cursor:
            statements = [
                cursor.mogrify(shape.sql, bound(shape, event))
                for shape, event in ((commits.outbox_statement(tuple(e)), e) for e in events)
            ]
            statements += ["COMMIT", commits.fixed_statement("release").sql]
            self.statement = "INSERT INTO ablo_outbox …; COMMIT; DO RELEASE_LOCK(…)"
            # The server runs them in order and stops at the first that fails;
            # each one's result (or error) is read in turn.
            await cursor.execute(";".join(statements))
            for done in range(1, len(statements)):
                if done == len(statements) - 1:
                    self.committed = True  # COMMIT's result was read: it is done
                await cursor.nextset()
        self.locked = False
