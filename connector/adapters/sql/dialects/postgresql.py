"""PostgreSQL, through psycopg 3, on the event loop.

- URL: ``postgresql://`` or ``postgres://``, libpq-style; psycopg 3 is the
  driver (the ``[postgres]`` extra). The adapter's own settings go into
  libpq's parameters without replacing the user's (see :func:`_connect_args`).
- Operations run on the event loop (SQLAlchemy's asyncio extension over
  psycopg's async driver); reads on connections of their own
  (:class:`~..connections.ReadConnections`) as prepared statements, in
  autocommit; commits in READ COMMITTED.
- The ledger reservation is ``INSERT … ON CONFLICT DO NOTHING RETURNING``;
  outbox cursors keep commit order under a transaction-scoped advisory
  lock; the WAL echo is ``pg_logical_emit_message``.
- Errors are told apart by SQLSTATE (its class says whose fault), and
  answers name the schema objects from psycopg's diagnostics, never the
  message, which quotes rejected values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.ranges import AbstractMultiRange, AbstractRange
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ....errors import ConfigError
from ..capture import CAPTURE_TABLE, CaptureSpec, CommitContext
from ..connections import ReadConnections
from ..execution import Database, LoopDatabase, PageShapes, Serving
from ..models import ServedModel
from ..tables import HIGHEST_CURSOR, LEDGER_TABLE, OUTBOX_TABLE, ledger, outbox
from ..values import json_text
from . import Dialect, text_literal
from .postgresql_commits import Commits

__all__ = ["ECHO_PREFIX", "OUTBOX_LOCK", "PostgreSQL"]

ECHO_PREFIX: Final = "ablo"
# The transaction-scoped advisory lock that orders outbox writes by commit
# (an arbitrary constant: the bytes of "abloOutb" as a signed 64-bit integer).
OUTBOX_LOCK: Final = int.from_bytes(b"abloOutb", "big", signed=True)


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError(
            "PostgreSQL needs psycopg 3: pip install 'ablo-connector[postgres]'"
        ) from None


def _connect_args(url: sa.URL, statement_timeout: float | None) -> dict[str, Any]:
    """The adapter's connection settings, merged into the URL's own: nothing
    the user set (in the URL, or in libpq's PG* variables) is replaced.

    ``statement_timeout`` cancels a statement that runs longer, in the
    database: a request past its deadline has been answered already, and its
    query must not keep holding a connection and its locks. It travels in
    libpq's ``options``, ahead of the user's own ``options`` (or PGOPTIONS,
    which an explicit ``options`` would silently replace): the server applies
    them in order, so the user's ``-c search_path=…`` always survives and the
    user's own ``-c statement_timeout=…`` wins over ours.
    """
    given = url.query
    args: dict[str, Any] = {}
    if "connect_timeout" not in given and not os.environ.get("PGCONNECT_TIMEOUT"):
        args["connect_timeout"] = 10
    if "fallback_application_name" not in given:
        # libpq uses it only when neither the URL nor PGAPPNAME names the application.
        args["fallback_application_name"] = "ablo-connector"
    options = given.get("options", os.environ.get("PGOPTIONS"))
    user_options = " ".join(options) if isinstance(options, tuple) else options
    ours = f"-c statement_timeout={int(statement_timeout * 1000)}" if statement_timeout else ""
    merged = " ".join(part for part in (ours, user_options) if part)
    if merged:
        args["options"] = merged
    return args


def _read_connector(
    engine: AsyncEngine, statement_timeout: float | None, *, any_date: bool
) -> Callable[[], Awaitable[Any]]:
    """Opens a psycopg connection for :class:`ReadConnections` as the engine
    opens its own (same address, credentials, type adapters, timeouts), in
    autocommit; ``any_date``: reading any date at once (see :func:`load_any_date`)."""
    import psycopg

    cargs, cparams = engine.sync_engine.dialect.create_connect_args(engine.url)
    params = {**cparams, **_connect_args(engine.url, statement_timeout), "autocommit": True}

    async def connect() -> Any:
        connection = await psycopg.AsyncConnection.connect(*cargs, **params)
        if any_date:
            load_any_date(connection.adapters)
        return connection

    return connect


# The date and time types whose values PostgreSQL holds and Python's do not:
# 'infinity', dates BC or past 9999, 24:00.
_DATE_TYPES: Final = ("date", "timestamp", "timestamptz", "time", "timetz")
_lenient_loaders: dict[type, type] = {}


def load_any_date(adapters: Any) -> bool:
    """Read the dates and times Python cannot hold as the text PostgreSQL
    writes ('infinity', '0100-01-01 BC'), and every other one as psycopg
    does; whether anything changed. Otherwise one such value fails every
    read of its row: its load, each list page holding it, and (captured) the
    events page holding its change, again at every poll, so that no later
    event is delivered.

    The wrapper costs about 0.3 µs a value (30 µs on a 50-row page with two
    timestamps): the read connections, a list's hot path, take it on only
    once such a value reaches them (see ``run_read``); the others at once.
    """
    changed = False
    from psycopg import DataError
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    for name in _DATE_TYPES:
        oid = adapters.types[name].oid
        strict = adapters.get_loader(oid, Format.TEXT)
        if strict is None or issubclass(strict, tuple(_lenient_loaders.values())):
            continue
        lenient = _lenient_loaders.get(strict)
        if lenient is None:

            class _Lenient(Loader):
                # A wrapper, not a subclass: psycopg's loaders are compiled,
                # and a Python subclass would lose their speed for every value.
                def __init__(self, oid: int, context: Any = None, strict: type = strict) -> None:
                    super().__init__(oid, context)
                    self._strict = strict(oid, context)

                def load(self, data: Any) -> Any:
                    try:
                        return self._strict.load(data)
                    except DataError:
                        return bytes(data).decode()

            lenient = _lenient_loaders[strict] = _Lenient
        adapters.register_loader(oid, lenient)
        changed = True
    return changed


def _is_load_error(error: BaseException) -> bool:
    import psycopg

    return isinstance(error, psycopg.DataError) and error.sqlstate is None  # not the server's


def _load_any_date_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # psycopg's own connection, or SQLAlchemy's asyncio wrapper around it.
    load_any_date(getattr(dbapi_connection, "driver_connection", dbapi_connection).adapters)


# ------------------------------------------------------------ the DDL migrate writes

_CREATE: Final = (
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

# A ledger row written before expires_at existed never expires.
_UPGRADES: Final = {
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
}

# The cursor sequence's last value (pg_sequence_last_value needs USAGE on the
# sequence, which the connector's user has anyway), or the highest row left.
_LAST_ISSUED_CURSOR: Final = sa.select(
    sa.func.greatest(
        HIGHEST_CURSOR,
        sa.func.pg_sequence_last_value(
            sa.cast(sa.func.pg_get_serial_sequence(OUTBOX_TABLE, "cursor"), postgresql.REGCLASS)
        ),
    )
)

# A serial column's default, as PostgreSQL prints it: nextval('name'::regclass).
_NEXTVAL: Final = re.compile(r"nextval\('((?:[^']|'')+)'::regclass\)")
_QUALIFIED_SEQUENCE: Final = sa.text(
    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = CAST(:name AS regclass)"
)
# What the connector does to each table, and so the least it needs.
_SERVED_PRIVILEGES: Final = "SELECT, INSERT, UPDATE, DELETE"
# DELETE: retention prunes both (see SQLSource.prune).
_LEDGER_PRIVILEGES: Final = "SELECT, INSERT, UPDATE, DELETE"
_OUTBOX_PRIVILEGES: Final = "SELECT, INSERT, DELETE"

# ------------------------------------------------------------ the driver's errors

_QUERY_CANCELED: Final = "57014"  # statement_timeout / cancel
_INSUFFICIENT_PRIVILEGE: Final = "42501"
# SQLSTATE classes (the first two characters) that are the request's fault.
_CALLER_CLASSES: Final = {
    "22": ("source_value_invalid", 400),  # data exception: a value the type refuses
    "23": ("source_constraint_violation", 409),  # integrity constraint violation
    "42": ("source_query_invalid", 400),  # a name or privilege the request asks for
    "54": ("source_value_invalid", 400),  # program limit exceeded: too large, too long
}
# A statement naming what a migration removed: a column, a table.
_GONE_SQLSTATES: Final = frozenset({"42703", "42P01"})
# feature_not_supported, as the plan cache raises it for a prepared statement
# whose result columns changed type: it fails on that connection every time
# until it is prepared again. Told apart from other 0A000s by where it was
# raised, which (unlike the message) is never translated.
_STALE_PLAN_SQLSTATE: Final = "0A000"
_STALE_PLAN_SOURCE: Final = ("RevalidateCachedQuery", "plancache.c")
_STALE_PLAN_MESSAGE: Final = "cached plan must not change result type"

# How SQLAlchemy names bound values in the SQL it hands psycopg: %(name)s.
_PLACEHOLDER: Final = re.compile(r"%\(([^)]*)\)s")
# Where PostgreSQL says which bound value it could not read (the CONTEXT line
# "unnamed portal parameter $2"; its words may be translated, the $2 is not).
_PARAMETER_NUMBER: Final = re.compile(r"\$(\d+)")
# A comparison's value is bound as the column's key plus a number (mood_1).
_ANONYMOUS_SUFFIX: Final = re.compile(r"_\d+$")
_LOAD_ID_BIND: Final = "ablo_id"  # see ServedModel.load_statement


def _sqlstate(original: BaseException | None) -> str | None:
    return getattr(original, "sqlstate", None)


def _raised_by_the_plan_cache(original: Any) -> bool:
    diag = getattr(original, "diag", None)
    where = (getattr(diag, "source_function", None), getattr(diag, "source_file", None))
    if any(place in _STALE_PLAN_SOURCE for place in where if place):
        return True
    return getattr(diag, "message_primary", None) == _STALE_PLAN_MESSAGE


def _refused_field(error: sa_exc.DBAPIError, models: Sequence[ServedModel]) -> str | None:
    """The field whose value PostgreSQL refused while binding it (an enum
    label it does not have, an address that is not one), or None.

    The error names the parameter by number only; psycopg numbers the
    statement's placeholders in order of first appearance, and SQLAlchemy
    names each after the column it is written to or compared with.
    """
    context = getattr(getattr(error.orig, "diag", None), "context", None)
    number = _PARAMETER_NUMBER.search(context or "")
    if number is None or not models or not error.statement:
        return None
    names = list(dict.fromkeys(_PLACEHOLDER.findall(error.statement)))
    index = int(number.group(1)) - 1
    if not 0 <= index < len(names):
        return None
    name = names[index]
    if name == _LOAD_ID_BIND:
        return "id"
    for candidate in (name, _ANONYMOUS_SUFFIX.sub("", name)):
        for served in models:
            field = served.fields.get(candidate)
            if field is not None:
                return field
    return None


def _condition(error: sa_exc.DBAPIError) -> str:
    """What PostgreSQL refused, from the error's fields: never its message, which
    quotes the rejected input."""
    original = error.orig
    diag = getattr(original, "diag", None)
    named = [
        f"{what} {value}"
        for what, value in (
            ("column", getattr(diag, "column_name", None)),
            ("constraint", getattr(diag, "constraint_name", None)),
            ("type", getattr(diag, "datatype_name", None)),
            ("table", getattr(diag, "table_name", None)),
        )
        if value
    ]
    condition = type(original).__name__
    sqlstate = getattr(original, "sqlstate", "")
    return f"the database refused the request: {condition} (SQLSTATE {sqlstate})" + (
        f" on {', '.join(named)}" if named else ""
    )


class PostgreSQL(Dialect):
    name: ClassVar[str] = "postgresql"
    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    url_form: ClassVar[str] = "postgresql://user@host/dbname"
    url_prefix: ClassVar[str] = "postgresql://"
    can_echo: ClassVar[bool] = True
    create_statements: ClassVar[tuple[str, str]] = _CREATE
    upgrades: ClassVar[Mapping[tuple[str, str], str]] = _UPGRADES
    last_issued_cursor: ClassVar[sa.Select[Any]] = _LAST_ISSUED_CURSOR
    thread_read_options: ClassVar[Mapping[str, Any]] = {"isolation_level": "AUTOCOMMIT"}
    #: A commit's connection: reads need no transaction, writes ask for one.
    write_options: ClassVar[Mapping[str, Any]] = {"isolation_level": "READ COMMITTED"}

    # ------------------------------------------------------------ URL, driver, engines

    def driver_url(self, url: sa.URL, driver: str) -> sa.URL:
        if driver not in ("", "psycopg"):
            raise ConfigError(f"PostgreSQL is served through psycopg 3, not {driver!r}")
        return url.set(drivername="postgresql+psycopg")

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
        _require_psycopg()
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=True,  # scripts and migrate are not latency-bound
            json_serializer=json_text,
            connect_args=_connect_args(url, statement_timeout),
        )
        sa.event.listen(engine, "connect", _load_any_date_on_connect)
        return engine

    def serving_database(self, url: sa.URL, serving: Serving) -> Database:
        _require_psycopg()
        engine = create_async_engine(
            url,
            pool_size=serving.pool_size,
            max_overflow=0,
            pool_timeout=serving.pool_timeout,
            pool_recycle=serving.pool_recycle,
            # Reads need no transaction; writes ask for one (write_options).
            isolation_level="AUTOCOMMIT",
            json_serializer=json_text,
            connect_args=_connect_args(url, serving.statement_timeout),
        )
        sa.event.listen(engine.sync_engine, "connect", _load_any_date_on_connect)
        reads = ReadConnections(
            _read_connector(engine, serving.statement_timeout, any_date=False),
            serving.pool_size,
            timeout=serving.pool_timeout,
            recycle=serving.pool_recycle,
        )
        # Commits on connections of their own too (see .postgresql_commits),
        # as many as SQLAlchemy's pool held for them.
        writes = ReadConnections(
            _read_connector(engine, serving.statement_timeout, any_date=True),
            serving.pool_size,
            timeout=serving.pool_timeout,
            recycle=serving.pool_recycle,
        )
        commits = Commits(
            engine.sync_engine.dialect,
            writes,
            PageShapes(serving.max_page_shapes, serving.max_page_shape_bytes),
            self.connection_lost,
            OUTBOX_LOCK,
            ECHO_PREFIX,
        )
        return LoopDatabase(engine, self, serving, reads, commits)

    def loop_database(self, engine: AsyncEngine, serving: Serving) -> LoopDatabase:
        # Every read through the engine's pool: its connect arguments are the user's.
        return LoopDatabase(engine, self, serving)

    def reflection_engine(self, url: sa.URL, statement_timeout: float | None) -> sa.Engine:
        url = url.set(drivername="postgresql+psycopg")
        return sa.create_engine(
            url, poolclass=NullPool, connect_args=_connect_args(url, statement_timeout)
        )

    async def run_read(
        self,
        connection: Any,
        sql: str,
        values: Mapping[str, Any] | Sequence[Any],
        describe: bool,
    ) -> tuple[list[Any], Sequence[Any] | None]:
        cursor = connection.cursor()
        await cursor.execute(sql, values, prepare=True)
        try:
            rows: list[Any] = await cursor.fetchall()
        except Exception as error:
            # A date or time Python cannot hold: from now on this connection
            # reads them as text, and the read runs again (it changes nothing).
            if not (_is_load_error(error) and load_any_date(connection.adapters)):
                raise
            cursor = connection.cursor()
            await cursor.execute(sql, values, prepare=True)
            rows = await cursor.fetchall()
        return rows, cursor.description if describe else None

    def connection_lost(self, connection: Any, error: BaseException) -> bool:
        return bool(connection.closed or connection.broken)

    # ------------------------------------------------------------ a commit

    def reserve(self, connection: sa.Connection, row: Mapping[str, Any]) -> bool:
        statement = (
            postgresql.insert(ledger)
            .values(**row)
            .on_conflict_do_nothing(index_elements=[ledger.c.client_tx_id])
            .returning(ledger.c.client_tx_id)
        )
        return connection.execute(statement).first() is not None

    def lock_commit_order(self, connection: sa.Connection) -> None:
        # Cursors come from a sequence when the row is inserted, not when the
        # transaction commits: without this lock a reader could see cursor 8
        # committed while 7 is still in flight, move past it, and never see
        # 7. Held from here to COMMIT only (the row changes before it stay
        # concurrent).
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(OUTBOX_LOCK)))

    def emit_echo(self, connection: sa.Connection, payload: str) -> None:
        connection.execute(sa.select(sa.func.pg_logical_emit_message(True, ECHO_PREFIX, payload)))

    # ------------------------------------------------------------ the driver's errors

    def configuration_problem(self, error: sa_exc.OperationalError, url: sa.URL) -> str | None:
        text = str(getattr(error, "orig", None) or error)
        user = url.username or "(the default user)"
        if "password authentication failed" in text or "no password supplied" in text:
            return (
                f"the database refused the login of user {user!r}: wrong or missing password "
                "in the database URL"
            )
        if re.search(r'role "[^"]*" does not exist', text):
            return f"the database has no user {user!r}: check the user in the database URL"
        if re.search(r'database "[^"]*" does not exist', text):
            return (
                f"database {url.database!r} does not exist on {url.host}:{url.port or 5432}: "
                "create it, or fix the database URL"
            )
        if re.search(r'permission denied for database "[^"]*"', text):
            return (
                f"user {user!r} may not connect to database {url.database!r}: grant it "
                "CONNECT, or fix the database URL"
            )
        if "no pg_hba.conf entry" in text or "authentication failed" in text:
            return (
                f"the database does not accept user {user!r} from this host (pg_hba.conf), "
                "or its authentication failed"
            )
        return None

    def lacks_privilege(self, original: BaseException | None) -> bool:
        return _sqlstate(original) == _INSUFFICIENT_PRIVILEGE

    def timed_out(self, original: BaseException | None) -> bool:
        return _sqlstate(original) == _QUERY_CANCELED

    def schema_changed(self, original: BaseException | None) -> bool:
        sqlstate = _sqlstate(original)
        if sqlstate in _GONE_SQLSTATES:
            return True
        return sqlstate == _STALE_PLAN_SQLSTATE and _raised_by_the_plan_cache(original)

    def caller_mistake(self, original: BaseException | None) -> tuple[str, int] | None:
        sqlstate = _sqlstate(original)
        return _CALLER_CLASSES.get(sqlstate[:2]) if sqlstate else None

    def refusal_message(
        self, error: sa_exc.DBAPIError, models: Sequence[ServedModel]
    ) -> tuple[str, str | None]:
        field = _refused_field(error, models)
        if field is None:
            return _condition(error), None
        return f"field {field!r}: {_condition(error)}", field

    def describe(self, original: BaseException) -> str | None:
        primary = getattr(getattr(original, "diag", None), "message_primary", None)
        return str(primary)[:300] if primary else None

    # ------------------------------------------------------------ migrate

    def grant_statements(
        self, connection: sa.Connection, role: str, served: Sequence[sa.Table]
    ) -> list[str]:
        """The GRANTs that let ``role`` serve ``served`` with the ledger and
        outbox, and nothing more: no ownership, no CREATE.

        Tables are named with their schema. A sequence is granted where an
        INSERT calls nextval() (a serial column's default, the outbox's
        cursor); an identity column needs none.
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
                    found.append(
                        connection.execute(_QUALIFIED_SEQUENCE, {"name": name}).scalar_one()
                    )
            return found

        outbox_sequences = [qualified(None, f"{OUTBOX_TABLE}_cursor_seq")]  # as migrate creates it
        if inspector.has_table(OUTBOX_TABLE):
            existing = sa.Table(OUTBOX_TABLE, sa.MetaData(), autoload_with=connection)
            outbox_sequences = sequences(existing)
        schemas = dict.fromkeys(
            [table.schema or default_schema for table in served] + [default_schema]
        )
        statements = [
            f"GRANT USAGE ON SCHEMA {preparer.quote_schema(str(s))} TO {grantee};" for s in schemas
        ]
        for table in served:
            name = qualified(table.schema, table.name)
            statements.append(f"GRANT {_SERVED_PRIVILEGES} ON {name} TO {grantee};")
            statements += [
                f"GRANT USAGE ON SEQUENCE {seq} TO {grantee};" for seq in sequences(table)
            ]
        statements.append(
            f"GRANT {_LEDGER_PRIVILEGES} ON {qualified(None, LEDGER_TABLE)} TO {grantee};"
        )
        statements.append(
            f"GRANT {_OUTBOX_PRIVILEGES} ON {qualified(None, OUTBOX_TABLE)} TO {grantee};"
        )
        statements += [f"GRANT USAGE ON SEQUENCE {seq} TO {grantee};" for seq in outbox_sequences]
        if inspector.has_table(CAPTURE_TABLE):  # the connector reads which models are captured
            statements.append(f"GRANT SELECT ON {qualified(None, CAPTURE_TABLE)} TO {grantee};")
        return statements

    # ------------------------------------------------------------ values

    dates_as_written = True  # see load_any_date

    def orderable(self, column_type: sa.types.TypeEngine[Any]) -> bool:
        return not isinstance(column_type, AbstractRange | AbstractMultiRange)

    def single_precision(self, column_type: sa.types.TypeEngine[Any]) -> bool:
        return isinstance(column_type, sa.REAL)  # float4; double precision is not a REAL

    def integer_bits(self, column_type: sa.types.TypeEngine[Any]) -> int:
        if isinstance(column_type, sa.SmallInteger):
            return 16
        if isinstance(column_type, sa.BigInteger):
            return 64
        return 32

    # ------------------------------------------------------------ capture
    #
    # Ordering. A reader pages by cursor and never goes back, so a cursor must
    # not become visible while a smaller one can still commit. Cursors come
    # from a sequence, drawn when a row is inserted; so the capture triggers
    # are constraint triggers DEFERRABLE INITIALLY DEFERRED: PostgreSQL queues
    # each row change (with its OLD and NEW) and runs the trigger at COMMIT,
    # where it takes OUTBOX_LOCK (transaction-scoped) and only then draws the
    # cursor and inserts the event. Every outbox write, the adapter's own
    # included (lock_commit_order), draws its cursors under that lock, which
    # is held until the transaction's end: cursors become visible in the order
    # they were drawn. Application transactions are not serialized on it: a
    # transaction takes the lock only in its commit, so one that runs for
    # minutes holds it for the few milliseconds its events take to insert.
    #
    # The connector's own commits write their own events (see .capture),
    # drawing cursors under OUTBOX_LOCK like the triggers. The commit sets
    # ``ablo.commit`` (transaction-local) to the rows it writes, and the
    # deferred trigger, running at that transaction's COMMIT, leaves those
    # rows alone: each change is recorded once.

    capture_state_create: ClassVar[str | None] = f"""CREATE TABLE IF NOT EXISTS {CAPTURE_TABLE} (
  model        TEXT PRIMARY KEY,
  schema_name  TEXT,
  table_name   TEXT NOT NULL,
  trigger_name TEXT NOT NULL,
  columns      TEXT NOT NULL,
  signature    TEXT NOT NULL,
  installed_at TIMESTAMPTZ
)"""

    def capture_teardown_statements(self) -> list[str]:
        return [f"DROP TABLE IF EXISTS {CAPTURE_TABLE}"]

    def install_capture_statements(self, connection: sa.Connection, spec: CaptureSpec) -> list[str]:
        quote = connection.dialect.identifier_preparer.quote
        schema = spec.schema or str(sa.inspect(connection).default_schema_name)
        table = f"{quote(schema)}.{quote(spec.table)}"
        function = f"{quote(schema)}.{quote(spec.trigger_name)}"
        sequence = connection.execute(
            sa.select(sa.func.pg_get_serial_sequence(OUTBOX_TABLE, "cursor"))
        ).scalar_one()
        literal = text_literal(connection.dialect, _literal)
        model = literal(spec.model)
        pairs = ", ".join(f"{literal(c)}, NEW.{quote(c)}" for c in spec.columns)
        kind = "'UPDATE'"
        if spec.archived_column is not None:
            archived = quote(spec.archived_column)
            others = [quote(c) for c in spec.columns if c != spec.archived_column]
            same = " AND ".join(f"OLD.{c}::text IS NOT DISTINCT FROM NEW.{c}::text" for c in others)
            kind = (
                f"CASE WHEN {same or 'true'} THEN CASE WHEN NEW.{archived} IS NULL "
                "THEN 'UNARCHIVE' ELSE 'ARCHIVE' END ELSE 'UPDATE' END"
            )
        old_values = ", ".join(f"OLD.{quote(c)}::text" for c in spec.columns)
        new_values = ", ".join(f"NEW.{quote(c)}::text" for c in spec.columns)
        id_column = quote(spec.id_column)

        def outbox_row(entity: str, kind: str, data: str) -> str:
            return (
                f"INSERT INTO {OUTBOX_TABLE} (cursor, id, model, entity_id, type, data, "
                f"occurred_at) VALUES (drawn, 'capture:' || drawn, {model}, {entity}, {kind}, "
                f"{data}, (extract(epoch FROM clock_timestamp()) * 1000)::bigint);"
            )

        body = f"""
DECLARE
  entity text;
  moved_from text;
  kind text;
  row_data jsonb;
  drawn bigint;
BEGIN
  IF TG_OP = 'DELETE' THEN
    entity := OLD.{id_column}::text;
    kind := 'DELETE';
  ELSE
    entity := NEW.{id_column}::text;
    row_data := jsonb_build_array(jsonb_build_object({pairs}));
    kind := CASE WHEN TG_OP = 'INSERT' THEN 'CREATE' ELSE {kind} END;
    IF TG_OP = 'UPDATE' AND OLD.{id_column}::text IS DISTINCT FROM entity THEN
      -- A new id is another row: the old one is gone, the new one created.
      moved_from := OLD.{id_column}::text;
      kind := 'CREATE';
    END IF;
  END IF;
  -- A connector commit writes the events of the rows it writes itself.
  IF NULLIF(current_setting('ablo.commit', true), '')::jsonb ? ({model} || chr(10) || entity)
  THEN
    RETURN NULL;
  END IF;
  PERFORM pg_advisory_xact_lock({OUTBOX_LOCK});
  IF moved_from IS NOT NULL THEN
    drawn := nextval({_literal(sequence)}::regclass);
    {outbox_row("moved_from", "'DELETE'", "NULL")}
  END IF;
  drawn := nextval({_literal(sequence)}::regclass);
  {outbox_row("entity", "kind", "row_data")}
  RETURN NULL;
END"""
        trigger = quote(spec.trigger_name)
        return [
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $ablo${body}\n$ablo$",
            f"CREATE CONSTRAINT TRIGGER {trigger} AFTER INSERT OR DELETE ON {table} "
            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {function}()",
            f"CREATE CONSTRAINT TRIGGER {quote(spec.trigger_name + '_update')} AFTER UPDATE ON "
            f"{table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN "
            f"(({old_values}) IS DISTINCT FROM ({new_values})) EXECUTE FUNCTION {function}()",
        ]

    def remove_capture_statements(
        self, schema: str | None, table: str, trigger_name: str
    ) -> list[str]:
        quote = _QUOTE.quote
        where = f"{quote(schema)}." if schema else ""
        qualified = f"{where}{quote(table)}"
        return [
            f"DROP TRIGGER IF EXISTS {quote(trigger_name)} ON {qualified}",
            f"DROP TRIGGER IF EXISTS {quote(trigger_name + '_update')} ON {qualified}",
            f"DROP FUNCTION IF EXISTS {where}{quote(trigger_name)}()",
        ]

    def begin_captured_commit(self, connection: sa.Connection, context: CommitContext) -> None:
        # Transaction-local: the deferred triggers read it at this COMMIT.
        connection.execute(sa.select(sa.func.set_config("ablo.commit", context.as_json(), True)))

    def captured_rows_statement(self, served: ServedModel) -> sa.Select[Any] | None:
        # The row the trigger stored, as a record of the table's own type:
        # every value read back by the type's input function, so the driver
        # gets what it gets from the table itself.
        preparer = _QUOTE
        table = served.table
        name = (
            f"{preparer.quote_schema(table.schema)}.{preparer.quote(table.name)}"
            if table.schema
            else preparer.quote(table.name)
        )
        populated = sa.func.jsonb_populate_record(
            sa.literal_column(f"NULL::{name}"), outbox.c.data[0]
        ).table_valued(*[sa.column(c.name, c.type) for c in served.selected], name="captured")
        return (
            sa.select(outbox.c.cursor, *populated.columns)
            .select_from(outbox.join(populated, sa.true()))
            .where(
                outbox.c.cursor > sa.bindparam("after"),
                outbox.c.cursor <= sa.bindparam("last"),
                outbox.c.model == sa.bindparam("model"),
                sa.func.jsonb_typeof(outbox.c.data) == "array",
            )
        )


_QUOTE: Final = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
