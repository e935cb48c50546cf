"""Did a served table change under the adapter? Telling a migration from a bad request.

The adapter reflects its tables once and prepares its statements once. A
routine migration (``ALTER COLUMN … TYPE``, a dropped or renamed column or
table) makes some of that stale, and the database then refuses statements
that were fine a moment ago. None of that is the caller's mistake, so it is
answered as the source's problem (503 ``source_schema_changed``, which the
engine retries), and the adapter reflects again and replaces the
connections whose prepared statements predate the change.

Which errors say so is a fact of each database, kept in the tables below:

- PostgreSQL: ``42703`` (a column that is gone), ``42P01`` (a table that is
  gone), and ``0A000`` raised by the plan cache ("cached plan must not change
  result type"): a statement prepared before a column changed type, which
  fails on that connection every time until it is prepared again.
- SQLite re-prepares its statements by itself; it names a missing column or
  table in its messages.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ...errors import SourceError
from .models import ServedModel

__all__ = [
    "PoolRenewal",
    "SchemaChanged",
    "Unservable",
    "describe_changes",
    "is_schema_change",
]

SCHEMA_CHANGED: Final = "source_schema_changed"

# PostgreSQL: the SQLSTATEs of a statement naming what a migration removed.
_GONE_SQLSTATES: Final = frozenset({"42703", "42P01"})
# PostgreSQL: feature_not_supported, as the plan cache raises it for a
# prepared statement whose result columns changed type. Told apart from other
# 0A000s by where it was raised, which (unlike the message) is never translated.
_STALE_PLAN_SQLSTATE: Final = "0A000"
_STALE_PLAN_SOURCE: Final = ("RevalidateCachedQuery", "plancache.c")
_STALE_PLAN_MESSAGE: Final = "cached plan must not change result type"
# SQLite: what its messages say about a column or table that is not there.
_SQLITE_GONE: Final = ("no such column", "no such table", "has no column named")


class SchemaChanged(SourceError):
    """A served table changed while a request ran: retryable, and not the caller's fault."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(SCHEMA_CHANGED, message, status=503, **fields)


class Unservable(SchemaChanged):
    """A model (or the ledger and outbox) already known not to be servable as
    mapped: the probe, not each request, looks again whether it is back."""


def is_schema_change(error: sa_exc.DBAPIError) -> bool:
    """Whether the database refused a statement because a served table changed."""
    original = error.orig
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate:
        if sqlstate in _GONE_SQLSTATES:
            return True
        return sqlstate == _STALE_PLAN_SQLSTATE and _raised_by_the_plan_cache(original)
    text = str(original).lower()
    return any(phrase in text for phrase in _SQLITE_GONE)


def _raised_by_the_plan_cache(original: Any) -> bool:
    diag = getattr(original, "diag", None)
    where = (getattr(diag, "source_function", None), getattr(diag, "source_file", None))
    if any(place in _STALE_PLAN_SOURCE for place in where if place):
        return True
    return getattr(diag, "message_primary", None) == _STALE_PLAN_MESSAGE


def describe_changes(old: ServedModel, new: ServedModel, dialect: sa.Dialect) -> list[str]:
    """What changed in a model's table between two reflections, column by column."""
    changes = [f"column {name} is gone" for name in old.fields if name not in new.fields]
    changes += [f"column {name} was added" for name in new.fields if name not in old.fields]
    for name in old.fields:
        if name in new.fields:
            before = _type_name(old.table.c[name], dialect)
            after = _type_name(new.table.c[name], dialect)
            if before != after:
                changes.append(f"column {name} changed type from {before} to {after}")
    return changes


def _type_name(column: sa.Column[Any], dialect: sa.Dialect) -> str:
    try:
        return str(column.type.compile(dialect=dialect))
    except sa_exc.CompileError:
        return repr(column.type)


class PoolRenewal:
    """Replaces every connection of a SQLAlchemy pool opened before the last
    :meth:`renew`, at its next checkout.

    psycopg prepares a statement it has run five times on a connection; one
    prepared before a column changed type fails there until it is prepared
    again. A checkout listener that raises ``DisconnectionError`` is the
    pool's own way to have a connection replaced before it is handed out.
    """

    _GENERATION: Final = "ablo_schema_generation"

    def __init__(self, engine: sa.Engine) -> None:
        self._generation = 0
        sa.event.listen(engine, "connect", self._stamp)
        sa.event.listen(engine, "checkout", self._check)

    def renew(self) -> None:
        self._generation += 1

    def _stamp(self, _dbapi_connection: Any, record: Any) -> None:
        record.info[self._GENERATION] = self._generation

    def _check(self, _dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.get(self._GENERATION) != self._generation:
            raise sa_exc.DisconnectionError(
                "opened before a served table changed: its prepared statements are stale"
            )
