"""A :class:`~connector.DataSource` served straight from SQL tables.

Reads are one SELECT each. A commit is one database transaction holding the
row changes, one ledger row and one outbox event per operation, and (on
PostgreSQL, when asked) the WAL echo; it either all happens or none of it.

The ledger row is *reserved* before any row is touched (``INSERT … ON
CONFLICT DO NOTHING``). A concurrent commit with the same ``correlationId``
waits on that row (PostgreSQL's unique index; SQLite's write lock), then
finds it and replays the stored answer: one database arbiter, one effect.

The methods are plain ``def``: the dispatcher runs them in worker threads,
so blocking database calls never stall the connection.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from ...errors import ConfigError, SourceError
from ...serve.datasource import DataSource, RequestContext
from ...wire.bodies import CommitRequest, CommitResult, EventsPage, ListPage, ListQuery, Operation
from .models import ModelMap, ServedModel
from .query import column_for, plan_list
from .schema import ledger, outbox, verify_tables
from .values import python_type, to_column_value, to_json_row

__all__ = ["SQLSource", "create_database_engine", "database_url", "describe_database_error"]

log = logging.getLogger("connector.sql")

ECHO_PREFIX: Final = "ablo"
# The transaction-scoped advisory lock that orders outbox writes by commit
# (an arbitrary constant: the bytes of "abloOutb" as a signed 64-bit integer).
OUTBOX_LOCK: Final = int.from_bytes(b"abloOutb", "big", signed=True)
LEDGER_RETENTION: Final = dt.timedelta(days=30)


def database_url(url: str | sa.URL) -> sa.URL:
    """Parse a database URL, choosing psycopg 3 for ``postgresql://``/``postgres://``."""
    try:
        parsed = sa.make_url(url)
    except sa_exc.ArgumentError:
        raise ConfigError(
            "the database URL is not valid (expected sqlite:///path.db or "
            "postgresql://user@host/dbname)"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend == "postgresql":
        if driver not in ("", "psycopg"):
            raise ConfigError(f"PostgreSQL is served through psycopg 3, not {driver!r}")
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise ConfigError(f"SQLite is served through the standard library, not {driver!r}")
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(
                "an in-memory SQLite database is private to one connection; use a file: sqlite:///path.db"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    raise ConfigError(
        f"unsupported database {backend!r}: the SQL adapter serves sqlite:/// and postgresql:// URLs"
    )


def create_database_engine(
    url: str | sa.URL,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
    statement_timeout: float | None = 30.0,
) -> sa.Engine:
    """An engine with the settings the adapter relies on (see the listeners below).

    ``statement_timeout`` (PostgreSQL) cancels a statement that runs longer,
    in the database: a request past its deadline has been answered already,
    and its query must not keep holding a connection and its locks.
    """
    parsed = database_url(url)
    if parsed.get_backend_name() == "postgresql":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError(
                "PostgreSQL needs psycopg 3: pip install 'ablo-connector[postgres]'"
            ) from None
        engine = sa.create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=True,  # a database restart costs one reconnect, not one failed request
            connect_args={
                "connect_timeout": 10,
                "application_name": "ablo-connector",
                **(
                    {"options": f"-c statement_timeout={int(statement_timeout * 1000)}"}
                    if statement_timeout
                    else {}
                ),
            },
        )
    else:
        engine = sa.create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
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


def _sqlite_begin(connection: sa.Connection) -> None:
    # A commit takes the write lock before reading the ledger, so two
    # identical commits serialize instead of both deciding to write.
    write = connection.get_execution_options().get("ablo_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SQLSource(DataSource):
    """Serve tables of a SQLite or PostgreSQL database as Ablo models.

    ``SQLSource("postgresql://app@db/app", models=ModelMap.from_toml("models.toml"))``
    serves the mapped tables; without ``models`` every table is served under
    its own name. Subclass it to override one operation and let the adapter
    serve the rest (call ``super()`` to reuse it).

    Reflection happens in :meth:`prepare` (the CLI calls it at startup to
    fail fast) or, at the latest, on the first request.
    """

    def __init__(
        self,
        url: str | sa.URL | sa.Engine,
        models: ModelMap | Mapping[str, Any] | None = None,
        *,
        page_size: int = 100,
        max_page_size: int = 1000,
        pool_size: int = 5,
        statement_timeout: float | None = 30.0,
    ) -> None:
        if page_size < 1 or max_page_size < page_size:
            raise ConfigError("page_size must be at least 1 and at most max_page_size")
        self.engine = (
            url
            if isinstance(url, sa.Engine)
            else create_database_engine(
                url, pool_size=pool_size, statement_timeout=statement_timeout
            )
        )
        if models is not None and not isinstance(models, ModelMap):
            models = ModelMap.from_dict(models)
        self.model_map = models
        self.page_size = page_size
        self.max_page_size = max_page_size
        self._models: dict[str, ServedModel] | None = None
        self._prepare_lock = threading.Lock()
        self._can_echo = self.engine.dialect.name == "postgresql"
        self._write_engine = self.engine.execution_options(ablo_write=True)

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"{type(self).__name__}({url!r})"

    # ------------------------------------------------------------ startup

    @property
    def models(self) -> Mapping[str, ServedModel]:
        """The served models, reflected on first use."""
        return self.prepare()

    def prepare(self) -> Mapping[str, ServedModel]:
        """Reflect the mapped tables and check the ledger and outbox exist.

        Raises :class:`ConfigError` for a mistake in the map or the schema and
        ``sqlalchemy.exc.OperationalError`` when the database is unreachable.
        """
        if self._models is not None:
            return self._models
        with self._prepare_lock:
            if self._models is None:
                self._models = self._reflect()
                log.info(
                    "serving %d model(s) from %s: %s",
                    len(self._models),
                    self.engine.url.render_as_string(hide_password=True),
                    ", ".join(sorted({m.name for m in self._models.values()})),
                )
        return self._models

    def _reflect(self) -> dict[str, ServedModel]:
        metadata = sa.MetaData()
        with self.engine.connect() as connection:
            inspector = sa.inspect(connection)
            verify_tables(inspector)
            specs = self.model_map or ModelMap.of_tables(inspector.get_table_names())
            if not specs:
                raise ConfigError(
                    "the database has no tables to serve (create one, or pass --models)"
                )
            served: dict[str, ServedModel] = {}
            for name, spec in specs.items():
                try:
                    table = sa.Table(
                        spec.table, metadata, schema=spec.schema, autoload_with=connection
                    )
                except sa_exc.NoSuchTableError:
                    where = f"{spec.schema}.{spec.table}" if spec.schema else spec.table
                    raise ConfigError(f"model {name!r}: table {where!r} does not exist") from None
                model = ServedModel.reflect(name, spec, table)
                served[name] = model
            # The engine's clients lower-case model names; answer to both.
            for name, model in list(served.items()):
                served.setdefault(name.lower(), model)
            return served

    def close(self) -> None:
        self.engine.dispose()

    def probe(self) -> None:
        """``SELECT 1``; raises ``SourceError("database_unreachable")`` while the database
        cannot be reached (the daemon calls it every few seconds; see ``DataSource.probe``)."""
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as error:
            raise SourceError(
                "database_unreachable", describe_database_error(error), status=503
            ) from None

    def _model(self, name: str) -> ServedModel:
        models: Mapping[str, ServedModel] | None = self._models
        if models is None:  # not reflected yet (the database was down at startup)
            with _database_errors():
                try:
                    models = self.prepare()
                except ConfigError as error:
                    log.error("cannot serve: %s", error)
                    raise SourceError(
                        "source_adapter_misconfigured", str(error), status=500
                    ) from None
        model = models.get(name)
        if model is None:
            raise SourceError(
                "source_unknown_model",
                f"this source serves no model {name!r}",
                model=name,
            )
        return model

    # ------------------------------------------------------------ reads

    def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        served = self._model(model)
        key = to_column_value(served.id, "id", id)
        with _database_errors(), self.engine.connect() as connection:
            row = connection.execute(
                sa.select(*served.selected).where(served.id == key).limit(1)
            ).first()
        return None if row is None else to_json_row(served.row_to_fields(row._mapping))

    def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:
        served = self._model(model)
        plan = plan_list(served, query, self.page_size, self.max_page_size)
        if plan.limit == 0:
            return ListPage(rows=[])
        with _database_errors(), self.engine.connect() as connection:
            found = connection.execute(plan.statement).all()
        page = found[: plan.limit]
        more = len(found) > plan.limit
        return ListPage(
            rows=[to_json_row(served.row_to_fields(row._mapping)) for row in page],
            next_cursor=plan.next_cursor(served, page[-1]) if more else None,
        )

    def events(self, cursor: str | None, limit: int | None, ctx: RequestContext) -> EventsPage:
        after = _outbox_cursor(cursor)
        count = min(self.page_size if limit is None else limit, self.max_page_size)
        if count == 0:
            return EventsPage(events=[], next_cursor=cursor)
        with _database_errors(), self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(outbox)
                .where(outbox.c.cursor > after)
                .order_by(outbox.c.cursor)
                .limit(count)
            ).all()
        events = [_event(row._mapping) for row in rows]
        # The last delivered cursor, or the one given: the engine always has
        # a position to resume from and never sees an event twice.
        return EventsPage(events=events, next_cursor=events[-1]["cursor"] if events else cursor)

    # ------------------------------------------------------------ commit

    def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        if commit.echo is not None and not self._can_echo:
            raise SourceError(
                "source_commit_echo_not_supported",
                f"a {self.engine.dialect.name} database cannot emit a PostgreSQL WAL echo",
                status=409,
            )
        if commit.echo is not None and commit.intent_hash is None:
            raise SourceError(
                "idempotency_conflict",
                "a commit with a WAL echo must carry the engine's intentHash",
                status=409,
            )
        key = commit.correlation_id
        if not key:  # the dispatcher refuses these first; direct callers too
            raise SourceError(
                "source_commit_requires_correlation_id", "a commit needs a correlationId"
            )
        intent = commit.effective_intent_hash
        # Resolve every model before the transaction: a bad name costs no lock.
        models = [self._model(op.model) for op in commit.operations]
        organization = commit.scope.organization_id if commit.scope else None

        with _database_errors(), self._write_engine.begin() as connection:
            if not self._reserve(connection, key, intent):
                return CommitResult(rows=self._replay(connection, key, intent))
            rows = [
                self._apply(connection, served, op)
                for op, served in zip(commit.operations, models, strict=True)
            ]
            if connection.dialect.name == "postgresql":
                # Cursors come from a sequence when the row is inserted, not
                # when the transaction commits: without this lock a reader
                # could see cursor 8 committed while 7 is still in flight,
                # move past it, and never see 7. Held from here to COMMIT
                # only (the row changes above stay concurrent).
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(OUTBOX_LOCK)))
            occurred_at = _now_ms()
            connection.execute(
                outbox.insert(),
                [
                    {
                        "id": f"{key}:{index}",
                        "model": op.model,
                        "entity_id": str(row.get("id", "")),
                        "type": op.type,
                        "data": None if op.type == "DELETE" else row,
                        "organization_id": organization,
                        "correlation_id": key,
                        "transaction_id": op.transaction_id,
                        "occurred_at": occurred_at,
                    }
                    for index, (op, row) in enumerate(zip(commit.operations, rows, strict=True))
                ],
            )
            connection.execute(
                ledger.update().where(ledger.c.client_tx_id == key).values(response=rows)
            )
            if commit.echo is not None:
                connection.execute(
                    sa.select(
                        sa.func.pg_logical_emit_message(True, ECHO_PREFIX, commit.echo.payload)
                    )
                )
        return CommitResult(rows=rows)

    def _reserve(self, connection: sa.Connection, key: str, intent: str) -> bool:
        insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        statement = (
            insert(ledger)
            .values(
                client_tx_id=key,
                response=[],
                request_hash=intent,
                expires_at=dt.datetime.now(dt.UTC) + LEDGER_RETENTION,
                created_at=dt.datetime.now(dt.UTC),
            )
            .on_conflict_do_nothing(index_elements=[ledger.c.client_tx_id])
            .returning(ledger.c.client_tx_id)
        )
        return connection.execute(statement).first() is not None

    def _replay(self, connection: sa.Connection, key: str, intent: str) -> Sequence[Any]:
        now = dt.datetime.now(dt.UTC)
        found = connection.execute(
            sa.select(
                ledger.c.request_hash,
                ledger.c.response,
                (ledger.c.expires_at <= now).label("expired"),
            ).where(ledger.c.client_tx_id == key)
        ).first()
        if found is None:  # reserved, then rolled back between our two statements
            raise SourceError(
                "source_commit_retry", "a concurrent commit with this correlationId rolled back; retry",
                status=503,
            )  # fmt: skip
        if found.request_hash != intent:
            raise SourceError(
                "idempotency_conflict",
                "this correlationId was already used with a different intent"
                if found.request_hash is not None
                else "this correlationId predates intent hashing and cannot be replayed safely",
                status=409,
            )
        if found.expired:
            raise SourceError(
                "idempotency_key_expired",
                "this correlationId has expired and cannot be executed again safely",
                status=409,
            )
        response = found.response
        if not isinstance(response, list):
            raise SourceError(
                "idempotency_conflict", "the stored answer for this correlationId is corrupt",
                status=409,
            )  # fmt: skip
        return response

    def _apply(
        self, connection: sa.Connection, served: ServedModel, op: Operation
    ) -> dict[str, Any]:
        raw_id = op.id if op.id is not None else (op.input or {}).get("id")
        if not isinstance(raw_id, str) or not raw_id:
            raise SourceError(
                "source_operation_id_required", f"{op.type} on {op.model!r} needs an id"
            )
        key = to_column_value(served.id, "id", raw_id)
        values: dict[str, Any] = {}
        for name, value in (op.input or {}).items():
            if name != "id":  # the row id is the operation's, never rewritten
                column = column_for(served, name, "input")
                values[column.name] = to_column_value(column, name, value)
        table, match = served.table, served.id == key

        if op.type == "CREATE":
            values[served.id.name] = key
            return self._one(connection, served, table.insert().values(values), key)
        if op.type == "DELETE":
            found = self._returning(connection, served, table.delete().where(match), key)
            # Deleting what is already gone is done, not an error.
            return found if found is not None else {"id": raw_id}

        if op.type in ("ARCHIVE", "UNARCHIVE"):
            archived_at = served.archived_at
            if archived_at is None:
                raise SourceError(
                    "source_archive_not_supported",
                    f"model {op.model!r} has no archivedAt column to {op.type.lower()}",
                    model=op.model,
                )
            values[archived_at.name] = _archive_stamp(archived_at) if op.type == "ARCHIVE" else None
        if values:
            found = self._returning(
                connection, served, table.update().where(match).values(values), key
            )
        else:
            found = self._select(connection, served, key)
        if found is None:
            raise SourceError(
                "source_row_not_found",
                f"{op.model} {raw_id!r} does not exist",
                status=404,
                model=op.model,
            )
        return found

    def _returning(
        self, connection: sa.Connection, served: ServedModel, statement: Any, key: Any
    ) -> dict[str, Any] | None:
        if _supports_returning(connection, statement):
            row = connection.execute(statement.returning(*served.selected)).first()
            return None if row is None else to_json_row(served.row_to_fields(row._mapping))
        if statement.is_delete:
            before = self._select(connection, served, key)
            connection.execute(statement)
            return before
        if connection.execute(statement).rowcount == 0:
            return None
        return self._select(connection, served, key)

    def _one(
        self, connection: sa.Connection, served: ServedModel, statement: Any, key: Any
    ) -> dict[str, Any]:
        row = self._returning(connection, served, statement, key)
        assert row is not None  # an INSERT that did not raise wrote its row
        return row

    def _select(
        self, connection: sa.Connection, served: ServedModel, key: Any
    ) -> dict[str, Any] | None:
        row = connection.execute(sa.select(*served.selected).where(served.id == key)).first()
        return None if row is None else to_json_row(served.row_to_fields(row._mapping))


def _supports_returning(connection: sa.Connection, statement: Any) -> bool:
    dialect = connection.dialect
    if statement.is_insert:
        return bool(dialect.insert_returning)
    if statement.is_delete:
        return bool(dialect.delete_returning)
    return bool(dialect.update_returning)


def _archive_stamp(column: sa.Column[Any]) -> Any:
    if python_type(column) in (int, float):
        return _now_ms()  # an epoch-milliseconds column
    return dt.datetime.now(dt.UTC)


def _outbox_cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 19:
        raise SourceError(
            "source_cursor_invalid", "the events cursor must be a cursor this source issued"
        )
    return int(cursor)


def _event(row: Mapping[Any, Any]) -> dict[str, Any]:
    event = {
        "id": row["id"],
        "model": row["model"],
        "entityId": row["entity_id"],
        "type": row["type"],
        "data": row["data"],
        "organizationId": row["organization_id"],
        "clientTxId": row["client_tx_id"],
        "correlationId": row["correlation_id"],
        "transactionId": row["transaction_id"],
        "occurredAt": row["occurred_at"],
        "cursor": str(row["cursor"]),
    }
    return {key: value for key, value in event.items() if value is not None}


@contextmanager
def _database_errors() -> Iterator[None]:
    """Database failures as answers: the caller's mistake, a conflict, or retry later."""
    try:
        yield
    except SourceError:
        raise
    except sa_exc.IntegrityError as error:
        raise SourceError(
            "source_constraint_violation", describe_database_error(error), status=409
        ) from None
    except (sa_exc.DataError, sa_exc.ProgrammingError) as error:
        raise SourceError("source_query_invalid", describe_database_error(error)) from None
    except sa_exc.OperationalError as error:
        if getattr(error.orig, "sqlstate", None) == _QUERY_CANCELED:
            raise SourceError(
                "source_database_timeout",
                "the database cancelled a statement that ran past its statement timeout",
                status=504,
            ) from None
        log.warning("database unavailable: %s", describe_database_error(error))
        raise SourceError(
            "source_database_unavailable", "the database is unavailable; retry", status=503
        ) from None
    except (sa_exc.InterfaceError, sa_exc.TimeoutError) as error:
        log.warning("database unavailable: %s", describe_database_error(error))
        raise SourceError(
            "source_database_unavailable", "the database is unavailable; retry", status=503
        ) from None


_QUERY_CANCELED: Final = "57014"  # PostgreSQL's statement_timeout / cancel SQLSTATE


def describe_database_error(error: Exception) -> str:
    """The database's own one-line reason, without the SQL or bound values."""
    original = getattr(error, "orig", None)
    diag = getattr(original, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:
        return str(primary)
    text = str(original if original is not None else error)
    return text.splitlines()[0][:300] if text else type(error).__name__
