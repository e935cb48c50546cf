"""Did a served table change under the adapter? Telling a migration from a bad request.

The adapter reflects its tables once and prepares its statements once. A
routine migration (``ALTER COLUMN … TYPE``, a dropped or renamed column or
table) makes some of that stale, and the database then refuses statements
that were fine a moment ago. None of that is the caller's mistake, so it is
answered as the source's problem (503 ``source_schema_changed``, which the
engine retries), and the adapter reflects again and replaces the
connections whose prepared statements predate the change.

Which errors say so is a fact of each database, stated by its dialect
(``Dialect.schema_changed``).
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
]

SCHEMA_CHANGED: Final = "source_schema_changed"


class SchemaChanged(SourceError):
    """A served table changed while a request ran: retryable, and not the caller's fault."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(SCHEMA_CHANGED, message, status=503, **fields)


class Unservable(SchemaChanged):
    """A model (or the ledger and outbox) already known not to be servable as
    mapped: the probe, not each request, looks again whether it is back."""


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
