"""SQLite, through the standard library, in worker threads.

- URL: ``sqlite:///path.db`` (relative) or ``sqlite:////abs/path.db``; the
  file must exist (the adapter never creates one) and cannot be in memory.
- Its driver blocks: operations run in the source's worker threads. Each
  connection runs in WAL mode, with foreign keys on and a case-sensitive
  ``LIKE``; a commit takes the write lock up front (``BEGIN IMMEDIATE``),
  which serializes writers, so outbox cursors are in commit order without a
  lock of the adapter's.
- The ledger reservation is ``INSERT … ON CONFLICT DO NOTHING RETURNING``;
  there is no WAL echo.
- SQLite's errors carry no SQLSTATE: they are told apart by their message,
  which names columns and constraints, never values.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite

from ....errors import ConfigError, describe_error
from ..execution import Database, Serving, ThreadDatabase
from ..models import ServedModel
from ..tables import HIGHEST_CURSOR, LEDGER_TABLE, OUTBOX_TABLE, ledger
from ..values import json_text
from . import Dialect

__all__ = ["SQLite"]

# The same names as the engine's tables, with SQLite's types. AUTOINCREMENT
# keeps cursors strictly increasing even after deletes.
_CREATE: Final = (
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

# ADD COLUMN takes no non-constant default here: a ledger row written before
# expires_at existed holds NULL, which never counts as expired.
_UPGRADES: Final = {
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
}

# AUTOINCREMENT keeps the last cursor issued in sqlite_sequence.
_SQLITE_SEQUENCE: Final = sa.table("sqlite_sequence", sa.column("name"), sa.column("seq"))
_LAST_ISSUED_CURSOR: Final = sa.select(
    sa.func.max(
        sa.func.coalesce(HIGHEST_CURSOR, 0),
        sa.func.coalesce(
            sa.select(_SQLITE_SEQUENCE.c.seq)
            .where(_SQLITE_SEQUENCE.c.name == OUTBOX_TABLE)
            .scalar_subquery(),
            0,
        ),
    )
)

# What SQLite says, in messages, for a request it cannot take.
_CALLER: Final = (
    ("constraint failed", "source_constraint_violation", 409),
    ("datatype mismatch", "source_value_invalid", 400),
    ("pattern too complex", "source_where_invalid", 400),
    ("too many sql variables", "source_where_invalid", 400),
    ("string or blob too big", "source_value_invalid", 400),
    ("too many terms", "source_where_invalid", 400),
)
# What its messages say about a column or table that is not there. (SQLite
# prepares its statements again by itself after a change.)
_GONE: Final = ("no such column", "no such table", "has no column named")


def _existing_file(url: sa.URL) -> None:
    path = Path(str(url.database))
    if not path.is_file():
        raise ConfigError(
            f"the SQLite database {str(path)!r} does not exist (sqlite:///relative/path.db is "
            "relative to the working directory; sqlite:////absolute/path.db is absolute)"
        )


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer
    # it past the first SELECT, and never take the write lock up front).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # LIKE is case-sensitive, as on PostgreSQL; ILIKE is emulated with lower().
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()


def _on_begin(connection: sa.Connection) -> None:
    options = connection.get_execution_options()
    if options.get("ablo_read", False):
        return  # one SELECT is atomic on its own: no transaction to open or end
    # A commit takes the write lock before reading the ledger, so two
    # identical commits serialize instead of both deciding to write.
    connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get("ablo_write") else "BEGIN")


def _message(original: BaseException | None) -> str:
    return str(original).lower()


class SQLite(Dialect):
    name: ClassVar[str] = "sqlite"
    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    url_form: ClassVar[str] = "sqlite:///path.db"
    url_prefix: ClassVar[str] = "sqlite:///"
    create_statements: ClassVar[tuple[str, str]] = _CREATE
    upgrades: ClassVar[Mapping[tuple[str, str], str]] = _UPGRADES
    last_issued_cursor: ClassVar[sa.Select[Any]] = _LAST_ISSUED_CURSOR
    no_grants_note: ClassVar[str | None] = (
        "-- SQLite has no users and no GRANTs: the connector's user needs to read and write "
        "the database file and its folder (for the -wal and -shm files)."
    )

    # ------------------------------------------------------------ URL, driver, engines

    def driver_url(self, url: sa.URL, driver: str) -> sa.URL:
        if driver not in ("", "pysqlite"):
            raise ConfigError(f"SQLite is served through the standard library, not {driver!r}")
        if url.database in (None, "", ":memory:"):
            raise ConfigError(
                "an in-memory SQLite database is private to one connection; use a file: sqlite:///path.db"
            )
        return url.set(drivername="sqlite+pysqlite")

    def create_engine(
        self,
        url: sa.URL,
        *,
        pool_size: int,
        max_overflow: int,
        pool_timeout: float,
        statement_timeout: float | None,
        must_exist: bool,
    ) -> sa.Engine:
        if must_exist:
            _existing_file(url)
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            json_serializer=json_text,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        sa.event.listen(engine, "connect", _on_connect)
        sa.event.listen(engine, "begin", _on_begin)
        return engine

    def serving_database(self, url: sa.URL, serving: Serving) -> Database:
        engine = self.create_engine(
            url,
            pool_size=serving.pool_size,
            max_overflow=0,
            pool_timeout=10.0,
            statement_timeout=serving.statement_timeout,
            must_exist=True,
        )
        return ThreadDatabase(engine, serving.pool_size, self.thread_read_options, self.run_write)

    # ------------------------------------------------------------ a commit

    def reserve(self, connection: sa.Connection, row: Mapping[str, Any]) -> bool:
        # The write lock is held already (BEGIN IMMEDIATE): a concurrent
        # commit of the same key waits for it, then finds the row.
        statement = (
            sqlite.insert(ledger)
            .values(**row)
            .on_conflict_do_nothing(index_elements=[ledger.c.client_tx_id])
            .returning(ledger.c.client_tx_id)
        )
        return connection.execute(statement).first() is not None

    # ------------------------------------------------------------ the driver's errors

    def schema_changed(self, original: BaseException | None) -> bool:
        text = _message(original)
        return any(phrase in text for phrase in _GONE)

    def caller_mistake(self, original: BaseException | None) -> tuple[str, int] | None:
        text = _message(original)
        for phrase, code, status in _CALLER:
            if phrase in text:
                return code, status
        return None

    def refusal_message(
        self, error: sa_exc.DBAPIError, models: Sequence[ServedModel]
    ) -> tuple[str, str | None]:
        # SQLite's messages name columns and constraints, never values.
        return describe_error(str(error.orig)), None

    def reflection_problem(
        self, error: sa_exc.OperationalError, model: str, schema: str | None
    ) -> str | None:
        if schema and "unknown database" in str(error.orig):
            return (
                f"model {model!r}: SQLite has no schema {schema!r} (on SQLite a "
                "schema is an attached database: leave `schema` out)"
            )
        return None

    # ------------------------------------------------------------ values

    def integer_bits(self, column_type: sa.types.TypeEngine[Any]) -> int:
        # SQLite stores every INTEGER in 64 bits; a column declared SMALLINT
        # keeps the width its declaration promises.
        return 16 if isinstance(column_type, sa.SmallInteger) else 64

    def bound_value_limit(self, connection: sa.Connection) -> int | None:
        raw = connection.connection.dbapi_connection
        limit: int = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # type: ignore[union-attr]
        return limit - 64
