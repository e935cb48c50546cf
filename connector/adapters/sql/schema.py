"""``migrate``: the adapter's own two tables, created, upgraded and checked.

Names and columns are the engine's (see :mod:`.tables`), so a database the
engine's tooling already prepared is served unchanged, and one prepared here
works with the engine's tooling. Every statement is safe to run again. The
statements themselves are each database's (its dialect's
``create_statements`` and ``upgrades``); the flow is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ...errors import ConfigError
from .dialects import dialect_named, find_dialect, registered
from .tables import LEDGER_TABLE, OUTBOX_TABLE, ledger, outbox

__all__ = [
    "grant_statements",
    "last_issued_cursor",
    "ledger",
    "migrate",
    "migration_statements",
    "outbox",
    "verify_tables",
]


def last_issued_cursor(dialect: str) -> sa.Select[Any]:
    """A statement for the highest outbox cursor ever issued (NULL: none yet)."""
    return dialect_named(dialect).last_issued_cursor


def migration_statements(dialect: str) -> tuple[str, ...]:
    found = find_dialect(dialect)
    if found is None:
        raise ConfigError(
            f"no migrations for the {dialect!r} dialect (supported: "
            f"{', '.join(sorted(registered()))})"
        )
    return found.create_statements


def migrate(engine: sa.Engine) -> list[str]:
    """Create or upgrade both tables in one transaction; returns each change made.

    It ends with the check ``run`` makes (:func:`verify_tables`), so a
    migrate that returns means ``run`` accepts the database. An empty list
    means there was nothing to do. Key and identity columns are never added:
    a table without them is not an older ledger or outbox, and migrate says so.
    """
    dialect = dialect_named(engine.dialect.name)
    creates = dict(zip((LEDGER_TABLE, OUTBOX_TABLE), dialect.create_statements, strict=True))
    with engine.begin() as connection:
        # Every change is decided before the first is made: MySQL commits
        # each CREATE and ALTER by itself, so a table migrate cannot complete
        # must stop it before it changes anything.
        inspector = sa.inspect(connection)
        planned: list[tuple[str, str]] = []  # (statement, the change it makes)
        for table in (ledger, outbox):
            if not inspector.has_table(table.name):
                planned.append((creates[table.name], f"created table {table.name}"))
                continue
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                definition = dialect.upgrades.get((table.name, column.name))
                if definition is None:
                    raise ConfigError(
                        f"{table.name} lacks column {column.name!r}, which migrate cannot add "
                        "to an existing table: is it the adapter's table? (rename it, or drop it "
                        "if it holds nothing you need, and run migrate again)"
                    )
                planned.append(
                    (
                        f"ALTER TABLE {table.name} ADD COLUMN {column.name} {definition}",
                        f"added column {table.name}.{column.name}",
                    )
                )
        for statement, _ in planned:
            connection.exec_driver_sql(statement)
        verify_tables(sa.inspect(connection))
    return [change for _, change in planned]


def verify_tables(inspector: Any) -> None:
    """Refuse to serve commits into a database that has no ledger or outbox."""
    for table in (ledger, outbox):
        if not inspector.has_table(table.name):
            raise ConfigError(
                f"the database has no {table.name} table: run "
                "`ablo-connector migrate --database-url ...` once to create it"
            )
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in present]
        if missing:
            raise ConfigError(
                f"{table.name} lacks columns {missing}: run `ablo-connector migrate` to upgrade it"
            )


def grant_statements(connection: sa.Connection, role: str, served: Sequence[sa.Table]) -> list[str]:
    """The GRANTs that let ``role`` serve ``served`` with the ledger and
    outbox, and nothing more: no ownership, no CREATE (see each dialect's
    ``grant_statements``)."""
    return dialect_named(connection.dialect.name).grant_statements(connection, role, served)
