"""The adapter's own two tables: the idempotency ledger and the outbox.

Names and columns are the engine's (``ablo_idempotency`` keyed by
``client_tx_id``, ``ablo_outbox`` ordered by ``cursor``), so a database the
engine's tooling already prepared is served unchanged, and one prepared here
works with the engine's tooling. Every statement is safe to run again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ...errors import ConfigError
from .models import LEDGER_TABLE, OUTBOX_TABLE

__all__ = [
    "grant_statements",
    "last_issued_cursor",
    "ledger",
    "migrate",
    "migration_statements",
    "outbox",
    "verify_tables",
]

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

_metadata = sa.MetaData()

ledger: Final = sa.Table(
    LEDGER_TABLE,
    _metadata,
    sa.Column("client_tx_id", sa.Text, primary_key=True),
    sa.Column("response", _JSON, nullable=False),
    sa.Column("request_hash", sa.Text),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)

outbox: Final = sa.Table(
    OUTBOX_TABLE,
    _metadata,
    sa.Column("cursor", sa.BigInteger, primary_key=True),
    sa.Column("id", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("entity_id", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("data", _JSON),
    sa.Column("organization_id", sa.Text),
    sa.Column("client_tx_id", sa.Text),
    sa.Column("correlation_id", sa.Text),
    sa.Column("transaction_id", sa.Text),
    sa.Column("occurred_at", sa.BigInteger),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)


_HIGHEST_CURSOR: Final = sa.select(sa.func.max(outbox.c.cursor)).scalar_subquery()
_SQLITE_SEQUENCE: Final = sa.table("sqlite_sequence", sa.column("name"), sa.column("seq"))

# The highest cursor the outbox ever handed out: its key's sequence, which
# pruning does not rewind (an empty outbox still knows it), or the highest row
# left. PostgreSQL: pg_sequence_last_value needs USAGE on the sequence, which
# the connector's user has anyway; SQLite: AUTOINCREMENT keeps it in
# sqlite_sequence.
_LAST_ISSUED_CURSOR: Final[dict[str, sa.Select[Any]]] = {
    "postgresql": sa.select(
        sa.func.greatest(
            _HIGHEST_CURSOR,
            sa.func.pg_sequence_last_value(
                sa.cast(sa.func.pg_get_serial_sequence(OUTBOX_TABLE, "cursor"), postgresql.REGCLASS)
            ),
        )
    ),
    "sqlite": sa.select(
        sa.func.max(
            sa.func.coalesce(_HIGHEST_CURSOR, 0),
            sa.func.coalesce(
                sa.select(_SQLITE_SEQUENCE.c.seq)
                .where(_SQLITE_SEQUENCE.c.name == OUTBOX_TABLE)
                .scalar_subquery(),
                0,
            ),
        )
    ),
}


def last_issued_cursor(dialect: str) -> sa.Select[Any]:
    """A statement for the highest outbox cursor ever issued (NULL: none yet)."""
    return _LAST_ISSUED_CURSOR[dialect]


_POSTGRESQL: Final = (
    f"""CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
  client_tx_id TEXT PRIMARY KEY,
  response     JSONB NOT NULL,
  request_hash TEXT,
  expires_at   TIMESTAMPTZ NOT NULL DEFAULT 'infinity',
  created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
    f"""CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (
  cursor          BIGSERIAL PRIMARY KEY,
  id              TEXT NOT NULL UNIQUE,
  model           TEXT NOT NULL,
  entity_id       TEXT NOT NULL,
  type            TEXT NOT NULL,
  data            JSONB,
  organization_id TEXT,
  client_tx_id    TEXT,
  correlation_id  TEXT,
  transaction_id  TEXT,
  occurred_at     BIGINT,
  created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
)

# SQLite has no engine-side tooling; the same names with SQLite's types.
# AUTOINCREMENT keeps cursors strictly increasing even after deletes.
_SQLITE: Final = (
    f"""CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
  client_tx_id TEXT PRIMARY KEY,
  response     JSON NOT NULL,
  request_hash TEXT,
  expires_at   TIMESTAMP,
  created_at   TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
)""",
    f"""CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (
  cursor          INTEGER PRIMARY KEY AUTOINCREMENT,
  id              TEXT NOT NULL UNIQUE,
  model           TEXT NOT NULL,
  entity_id       TEXT NOT NULL,
  type            TEXT NOT NULL,
  data            JSON,
  organization_id TEXT,
  client_tx_id    TEXT,
  correlation_id  TEXT,
  transaction_id  TEXT,
  occurred_at     INTEGER,
  created_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
)""",
)


# What ADD COLUMN gives a column that an older table lacks. A ledger row
# written before expires_at existed never expires (PostgreSQL) or is NULL,
# which never counts as expired (SQLite, whose ADD COLUMN takes no
# non-constant default). Key and identity columns are not here: a table
# without them is not an older ledger or outbox, and migrate says so.
_UPGRADES: Final[dict[str, dict[tuple[str, str], str]]] = {
    "postgresql": {
        (LEDGER_TABLE, "request_hash"): "TEXT",
        (LEDGER_TABLE, "expires_at"): "TIMESTAMPTZ NOT NULL DEFAULT 'infinity'",
        (LEDGER_TABLE, "created_at"): "TIMESTAMPTZ NOT NULL DEFAULT now()",
        (OUTBOX_TABLE, "data"): "JSONB",
        (OUTBOX_TABLE, "organization_id"): "TEXT",
        (OUTBOX_TABLE, "client_tx_id"): "TEXT",
        (OUTBOX_TABLE, "correlation_id"): "TEXT",
        (OUTBOX_TABLE, "transaction_id"): "TEXT",
        (OUTBOX_TABLE, "occurred_at"): "BIGINT",
        (OUTBOX_TABLE, "created_at"): "TIMESTAMPTZ NOT NULL DEFAULT now()",
    },
    "sqlite": {
        (LEDGER_TABLE, "request_hash"): "TEXT",
        (LEDGER_TABLE, "expires_at"): "TIMESTAMP",
        (LEDGER_TABLE, "created_at"): "TIMESTAMP",
        (OUTBOX_TABLE, "data"): "JSON",
        (OUTBOX_TABLE, "organization_id"): "TEXT",
        (OUTBOX_TABLE, "client_tx_id"): "TEXT",
        (OUTBOX_TABLE, "correlation_id"): "TEXT",
        (OUTBOX_TABLE, "transaction_id"): "TEXT",
        (OUTBOX_TABLE, "occurred_at"): "INTEGER",
        (OUTBOX_TABLE, "created_at"): "TIMESTAMP",
    },
}


def migration_statements(dialect: str) -> tuple[str, ...]:
    if dialect == "postgresql":
        return _POSTGRESQL
    if dialect == "sqlite":
        return _SQLITE
    raise ConfigError(f"no migrations for the {dialect!r} dialect (supported: postgresql, sqlite)")


def migrate(engine: sa.Engine) -> list[str]:
    """Create or upgrade both tables in one transaction; returns each change made.

    It ends with the check ``run`` makes (:func:`verify_tables`), so a
    migrate that returns means ``run`` accepts the database. An empty list
    means there was nothing to do.
    """
    dialect = engine.dialect.name
    creates = dict(zip((LEDGER_TABLE, OUTBOX_TABLE), migration_statements(dialect), strict=True))
    changes: list[str] = []
    with engine.begin() as connection:
        inspector = sa.inspect(connection)
        for table in (ledger, outbox):
            if not inspector.has_table(table.name):
                connection.exec_driver_sql(creates[table.name])
                changes.append(f"created table {table.name}")
                continue
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                definition = _UPGRADES[dialect].get((table.name, column.name))
                if definition is None:
                    raise ConfigError(
                        f"{table.name} lacks column {column.name!r}, which migrate cannot add "
                        "to an existing table: is it the adapter's table? (rename it, or drop it "
                        "if it holds nothing you need, and run migrate again)"
                    )
                connection.exec_driver_sql(
                    f"ALTER TABLE {table.name} ADD COLUMN {column.name} {definition}"
                )
                changes.append(f"added column {table.name}.{column.name}")
        verify_tables(sa.inspect(connection))
    return changes


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


# A serial column's default, as PostgreSQL prints it: nextval('name'::regclass).
_NEXTVAL: Final = re.compile(r"nextval\('((?:[^']|'')+)'::regclass\)")
_QUALIFIED_SEQUENCE: Final = sa.text(
    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = CAST(:name AS regclass)"
)
# What the connector does to each table, and so the least it needs.
_SERVED_PRIVILEGES: Final = "SELECT, INSERT, UPDATE, DELETE"
_LEDGER_PRIVILEGES: Final = "SELECT, INSERT, UPDATE"
_OUTBOX_PRIVILEGES: Final = "SELECT, INSERT"


def grant_statements(connection: sa.Connection, role: str, served: Sequence[sa.Table]) -> list[str]:
    """The GRANTs (PostgreSQL) that let ``role`` serve ``served`` with the
    ledger and outbox, and nothing more: no ownership, no CREATE.

    Tables are named with their schema. A sequence is granted where an
    INSERT calls nextval() (a serial column's default, the outbox's cursor);
    an identity column needs none.
    """
    preparer = connection.dialect.identifier_preparer
    inspector = sa.inspect(connection)
    default_schema = str(inspector.default_schema_name)
    grantee = preparer.quote(role)

    def qualified(schema: str | None, name: str) -> str:
        return f"{preparer.quote_schema(schema or default_schema)}.{preparer.quote(name)}"

    def sequences(table: sa.Table) -> list[str]:
        found = []
        for column in table.columns:
            default = column.server_default
            match = _NEXTVAL.search(str(getattr(default, "arg", "")))
            if match is not None:
                name = match.group(1).replace("''", "'")
                found.append(connection.execute(_QUALIFIED_SEQUENCE, {"name": name}).scalar_one())
        return found

    outbox_sequences = [qualified(None, f"{OUTBOX_TABLE}_cursor_seq")]  # as migrate creates it
    if inspector.has_table(OUTBOX_TABLE):
        existing = sa.Table(OUTBOX_TABLE, sa.MetaData(), autoload_with=connection)
        outbox_sequences = sequences(existing)
    schemas = dict.fromkeys([table.schema or default_schema for table in served] + [default_schema])
    statements = [
        f"GRANT USAGE ON SCHEMA {preparer.quote_schema(str(s))} TO {grantee};" for s in schemas
    ]
    for table in served:
        name = qualified(table.schema, table.name)
        statements.append(f"GRANT {_SERVED_PRIVILEGES} ON {name} TO {grantee};")
        statements += [f"GRANT USAGE ON SEQUENCE {seq} TO {grantee};" for seq in sequences(table)]
    statements.append(
        f"GRANT {_LEDGER_PRIVILEGES} ON {qualified(None, LEDGER_TABLE)} TO {grantee};"
    )
    statements.append(
        f"GRANT {_OUTBOX_PRIVILEGES} ON {qualified(None, OUTBOX_TABLE)} TO {grantee};"
    )
    statements += [f"GRANT USAGE ON SEQUENCE {seq} TO {grantee};" for seq in outbox_sequences]
    return statements
