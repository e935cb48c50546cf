"""The adapter's own two tables: the idempotency ledger and the outbox.

Names and columns are the engine's (``ablo_idempotency`` keyed by
``client_tx_id``, ``ablo_outbox`` ordered by ``cursor``), so a database the
engine's tooling already prepared is served unchanged, and one prepared here
works with the engine's tooling. Every statement is safe to run again.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ...errors import ConfigError
from .models import LEDGER_TABLE, OUTBOX_TABLE

__all__ = ["ledger", "migrate", "migration_statements", "outbox", "verify_tables"]

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


def _add_column_if_absent(table: str, column: str, definition: str) -> str:
    # ADD COLUMN IF NOT EXISTS checks table ownership before existence, so a
    # re-run against a ledger owned by another role would fail; the catalog
    # is readable by anyone, so look there first.
    return f"""DO $$
DECLARE target regclass := to_regclass('{table}');
BEGIN
  IF target IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM pg_attribute
    WHERE attrelid = target AND attname = '{column}' AND attnum > 0 AND NOT attisdropped
  ) THEN
    EXECUTE 'ALTER TABLE {table} ADD COLUMN {column} {definition}';
  END IF;
END $$"""


_POSTGRESQL: Final = (
    f"""CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
  client_tx_id TEXT PRIMARY KEY,
  response     JSONB NOT NULL,
  request_hash TEXT,
  expires_at   TIMESTAMPTZ NOT NULL DEFAULT 'infinity',
  created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
    _add_column_if_absent(LEDGER_TABLE, "request_hash", "TEXT"),
    _add_column_if_absent(LEDGER_TABLE, "expires_at", "TIMESTAMPTZ NOT NULL DEFAULT ''infinity''"),
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
    _add_column_if_absent(OUTBOX_TABLE, "correlation_id", "TEXT"),
    _add_column_if_absent(OUTBOX_TABLE, "transaction_id", "TEXT"),
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


def migration_statements(dialect: str) -> tuple[str, ...]:
    if dialect == "postgresql":
        return _POSTGRESQL
    if dialect == "sqlite":
        return _SQLITE
    raise ConfigError(f"no migrations for the {dialect!r} dialect (supported: postgresql, sqlite)")


def migrate(engine: sa.Engine) -> list[str]:
    """Create (or complete) both tables in one transaction; returns what was missing."""
    before = set(sa.inspect(engine).get_table_names())
    with engine.begin() as connection:
        for statement in migration_statements(engine.dialect.name):
            connection.exec_driver_sql(statement)
    return [name for name in (LEDGER_TABLE, OUTBOX_TABLE) if name not in before]


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
