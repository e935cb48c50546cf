"""What differs from one database to the next, one file per database.

The adapter is written once: listing rules, cursors, limits, the
idempotency flow and outbox paging do not depend on the database. What does
is stated here, per database, as a :class:`Dialect`:

- the URL and its driver, the engines and their connect hooks, and how an
  operation runs (on the event loop, or in worker threads);
- how a commit reserves its ledger row, keeps outbox cursors in commit
  order, and emits the WAL echo;
- the DDL ``migrate`` writes, and what it adds to older tables;
- the driver's errors, as one table per database: which are the caller's
  mistake, a timeout, a served table that changed, or a configuration
  problem that waiting will not cure;
- value conversion facts (integer widths, how many values one statement binds).

A dialect is chosen once, by name, when a source or an engine is built
(:func:`dialect_named`, :func:`dialect_of_url`), and asked from then on: no
``if`` on a database's name anywhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ....errors import ConfigError
from ..execution import run_write

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..capture import CaptureSpec, CommitContext
    from ..execution import Database, LoopDatabase, Serving
    from ..models import ServedModel

__all__ = [
    "Dialect",
    "dialect_named",
    "dialect_of_url",
    "find_dialect",
    "registered",
    "text_literal",
]

T = TypeVar("T")


class Dialect:
    """Everything the adapter does differently on one database.

    A subclass states its facts as class attributes and overrides the methods
    whose default does not hold for it. One instance per database serves
    every source (it keeps no state of its own).
    """

    #: SQLAlchemy's backend name, by which the registry knows the dialect.
    name: ClassVar[str]
    #: The connections a source keeps open when not told (``pool_size``).
    default_pool_size: ClassVar[int] = 10
    #: The URL schemes that mean this database (the first is the name).
    schemes: ClassVar[tuple[str, ...]]
    #: A URL of this database as the messages show one, and how such URLs start.
    url_form: ClassVar[str]
    url_prefix: ClassVar[str]
    #: Whether a commit can emit the engine's WAL echo (``postgres-wal``).
    can_echo: ClassVar[bool] = False
    #: ``CREATE TABLE`` of the ledger, then of the outbox, as ``migrate`` runs them.
    create_statements: ClassVar[tuple[str, str]]
    #: What ``ALTER TABLE … ADD COLUMN`` gives each column an older ledger or
    #: outbox may lack, by (table, column).
    upgrades: ClassVar[Mapping[tuple[str, str], str]]
    #: The highest outbox cursor ever issued (NULL: none yet), which pruning
    #: does not rewind.
    last_issued_cursor: ClassVar[sa.Select[Any]]
    #: What ``migrate --print-grants`` prints where the database has no GRANTs
    #: (None: it has them, see :meth:`grant_statements`).
    no_grants_note: ClassVar[str | None] = None
    #: The first lines ``migrate --print-sql`` prints: who runs the DDL, and where.
    print_sql_note: ClassVar[str] = (
        "-- run as the owner, in the schema the connector's user finds first on its search_path."
    )
    #: Execution options of a read on an :class:`sqlalchemy.Engine` passed in.
    thread_read_options: ClassVar[Mapping[str, Any]] = {}

    # ------------------------------------------------------------ URL, driver, engines

    def driver_url(self, url: sa.URL, driver: str) -> sa.URL:
        """``url`` with the driver the adapter serves this database through,
        or a ConfigError naming a driver it does not."""
        raise NotImplementedError

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
        """A synchronous engine (for ``migrate``, ``check``, scripts and tests)."""
        raise NotImplementedError

    def serving_database(self, url: sa.URL, serving: Serving) -> Database:
        """How a source built from ``url`` runs its operations."""
        raise NotImplementedError

    def loop_database(self, engine: AsyncEngine, serving: Serving) -> LoopDatabase:
        """How a source serves an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` passed in."""
        raise ConfigError(
            f"{self.name} is served in worker threads: pass a sqlalchemy.Engine, not an AsyncEngine"
        )

    def run_write(
        self, engine: sa.Engine, work: Callable[[sa.Connection], T], args: tuple[Any, ...]
    ) -> T:
        """Run ``work`` (a commit) in one transaction on ``engine``; what the
        dialect's commit-order lock needs released after it, it releases."""
        return run_write(engine, work, args)

    # ------------------------------------------------------------ a list

    def pattern_match(
        self, column: sa.ColumnElement[Any], op: str, placeholder: str
    ) -> sa.ColumnElement[bool]:
        """``column`` against a ``LIKE``/``NOT LIKE``/``ILIKE``/``NOT ILIKE``
        pattern bound as ``placeholder``: ``LIKE`` case-sensitive, ``ILIKE``
        not, a backslash escaping ``%`` and ``_``. SQLAlchemy writes ILIKE as
        ``lower(c) LIKE lower(v)`` where the database lacks it."""
        pattern: sa.BindParameter[Any] = sa.bindparam(placeholder)
        if op == "LIKE":
            return column.like(pattern, escape="\\")
        if op == "NOT LIKE":
            return column.not_like(pattern, escape="\\")
        if op == "ILIKE":
            return column.ilike(pattern, escape="\\")
        return column.not_ilike(pattern, escape="\\")

    def nulls_last(
        self, ordered: sa.UnaryExpression[Any], column: sa.ColumnElement[Any]
    ) -> tuple[sa.ColumnElement[Any], ...]:
        """The ORDER BY terms that sort ``column`` as ``ordered`` says, NULLs last."""
        return (ordered.nulls_last(),)

    def check_server(self, connection: sa.Connection) -> None:
        """At start: refuse (ConfigError, one line) a server the adapter cannot
        serve as documented, and log what the operator should know."""

    # ------------------------------------------------------------ a commit

    def reserve(self, connection: sa.Connection, row: Mapping[str, Any]) -> bool:
        """Insert the commit's ledger ``row`` unless its key is there; whether
        it was inserted. A concurrent commit of the same key waits for this
        one to end, then finds the row."""
        raise NotImplementedError

    def lock_commit_order(self, connection: sa.Connection) -> None:
        """Before a commit writes its outbox events: make later commits wait,
        so that cursors become visible in the order they were drawn. Nothing
        where writers are serialized anyway."""

    def emit_echo(self, connection: sa.Connection, payload: str) -> None:
        """Emit the WAL echo ``payload`` in the commit's transaction."""
        raise NotImplementedError

    # ------------------------------------------------------------ the driver's errors

    def configuration_problem(self, error: sa_exc.OperationalError, url: sa.URL) -> str | None:
        """A connection failure that waiting will not cure (a refused login,
        a database that does not exist), as one line naming what is wrong
        and never the password; None for an outage."""
        return None

    def lacks_privilege(self, original: BaseException | None) -> bool:
        """Whether the database refused a statement for want of a privilege."""
        return False

    def timed_out(self, original: BaseException | None) -> bool:
        """Whether the database cancelled a statement past its statement timeout."""
        return False

    def schema_changed(self, original: BaseException | None) -> bool:
        """Whether the database refused a statement because a served table changed."""
        return False

    def caller_mistake(self, original: BaseException | None) -> tuple[str, int] | None:
        """The error code and status of a refusal that is the request's fault, or None."""
        return None

    def refusal_message(
        self, error: sa_exc.DBAPIError, models: Sequence[ServedModel]
    ) -> tuple[str, str | None]:
        """What an answer says of a refusal that is the request's fault, and
        the field whose value was refused (None if unknown). It never carries
        SQL text or a bound value."""
        raise NotImplementedError

    def describe(self, original: BaseException) -> str | None:
        """The database's own one-line reason for ``original``, if this
        dialect's driver raised it (for the operator's log; None otherwise)."""
        return None

    def reflection_problem(
        self, error: sa_exc.OperationalError, model: str, schema: str | None
    ) -> str | None:
        """Why a model's table could not be reflected, when that is a mistake
        in the map rather than an outage."""
        return None

    # ------------------------------------------------------------ migrate

    def grant_statements(
        self, connection: sa.Connection, role: str, served: Sequence[sa.Table]
    ) -> list[str]:
        """The GRANTs ``role`` needs to serve ``served`` with the ledger and outbox."""
        raise NotImplementedError

    # ------------------------------------------------------------ capture

    #: ``CREATE TABLE`` of ``ablo_capture`` (None: this database has no capture yet).
    capture_state_create: ClassVar[str | None] = None
    #: Why this database has no capture, as ``migrate --capture`` says it
    #: (one line; None: the generic "not available" line).
    capture_refusal: ClassVar[str | None] = None

    def capture_setup_statements(self) -> list[str]:
        """What ``migrate --capture`` creates before the first model's triggers."""
        return [self.capture_state_create] if self.capture_state_create else []

    def capture_teardown_statements(self) -> list[str]:
        """What removing every capture drops once the triggers are gone."""
        return []

    def install_capture_statements(self, connection: sa.Connection, spec: CaptureSpec) -> list[str]:
        """The DDL that makes the database record every change to ``spec``'s
        table into the outbox, in the writer's transaction."""
        raise NotImplementedError

    def remove_capture_statements(
        self, schema: str | None, table: str, trigger_name: str
    ) -> list[str]:
        """The DDL that removes what :meth:`install_capture_statements` created."""
        raise NotImplementedError

    def begin_captured_commit(self, connection: sa.Connection, context: CommitContext) -> None:
        """Before a connector commit writes a captured table: tell the
        triggers which rows it writes (and records itself)."""

    def end_captured_commit(self, connection: sa.Connection, context: CommitContext) -> None:
        """After its last write (before COMMIT): what :meth:`begin_captured_commit`
        set up and must not outlive the commit."""

    #: Whether the triggers stage their rows for the connector to move into
    #: the outbox (see :meth:`move_captured`) rather than write it themselves.
    stages_capture: ClassVar[bool] = False
    #: Whether the helpers for a handler's own tables (``table_capture_statements``,
    #: ``own_events``) are offered on this database.
    capture_helpers: ClassVar[bool] = True

    def replaces_capture(self, connection: sa.Connection) -> bool:
        """Whether :meth:`install_capture_statements` replace a table's
        triggers in place (no instant without them where DDL is not
        transactional), so the old ones are not dropped first."""
        return False

    def capture_problem(self, connection: sa.Connection, spec: CaptureSpec) -> str | None:
        """Why ``spec``'s table cannot be captured (one line), before anything changes."""
        return None

    def script(self, statements: Sequence[str]) -> list[str]:
        """``statements`` as lines a database's own client runs, in order."""
        return [f"{statement};" for statement in statements]

    def has_staged(self, connection: sa.Connection) -> bool:
        """Whether the staging table holds a committed row (a cheap read,
        before a write transaction is spent on :meth:`move_captured`)."""
        return False

    def move_captured(self, connection: sa.Connection, limit: int) -> int:
        """Move at most ``limit`` committed staged rows into the outbox, in
        one transaction under the commit-order lock; how many were moved."""
        return 0

    def captured_value_processors(
        self, served: ServedModel, dialect: sa.Dialect
    ) -> dict[str, Callable[[Any], Any]]:
        """Per column, what turns a value a trigger stored into what ``load``
        answers (the driver's and SQLAlchemy's conversions)."""
        from ..capture import result_processors

        return result_processors(served, dialect)

    def captured_rows_statement(self, served: ServedModel) -> sa.Select[Any] | None:
        """A statement that turns the captured rows of ``served`` (outbox
        cursors ``after`` < cursor <= ``last``) into the model's selected
        columns, typed by the database (None: done in Python)."""
        return None

    # ------------------------------------------------------------ values

    def integer_bits(self, column_type: sa.types.TypeEngine[Any]) -> int:
        """How many bits an integer column of ``column_type`` holds."""
        return 64

    #: Dates and times Python cannot hold are served as the database writes
    #: them ('infinity'), and a value that is not ISO is left to the database.
    dates_as_written: ClassVar[bool] = False

    def orderable(self, column_type: sa.types.TypeEngine[Any]) -> bool:
        """Whether a list may be ordered by a column of ``column_type``, a type
        SQLAlchemy gives no Python type for (see ``query.order_column_for``)."""
        return True

    def single_precision(self, column_type: sa.types.TypeEngine[Any]) -> bool:
        """Whether a float column of ``column_type`` holds single precision."""
        return False

    def integer_unsigned(self, column_type: sa.types.TypeEngine[Any]) -> bool:
        """Whether an integer column of ``column_type`` holds no negative values."""
        return False

    def text_capacity(self, column_type: sa.types.TypeEngine[Any]) -> int | None:
        """How many characters of ASCII text a column of ``column_type`` holds
        (None: no bound the type states)."""
        length = getattr(column_type, "length", None)
        return length if isinstance(length, int) else None

    def adapt_reflected(self, connection: sa.Connection, table: sa.Table) -> None:
        """Correct what reflection could not know of ``table``'s columns (a
        type the database reports as another), before the table is served."""

    def bound_value_limit(self, connection: sa.Connection) -> int | None:
        """The most values one statement may bind, if the database says so
        per connection (None: the adapter's own limit holds)."""
        return None


@functools.cache
def registered() -> dict[str, Dialect]:
    """Every dialect, by name, in the order messages list them."""
    from .mysql import MySQL
    from .postgresql import PostgreSQL
    from .sqlite import SQLite

    return {dialect.name: dialect for dialect in (SQLite(), PostgreSQL(), MySQL())}


def find_dialect(name: str) -> Dialect | None:
    """The dialect of this name or URL scheme, if there is one."""
    return next((d for d in registered().values() if name == d.name or name in d.schemes), None)


def dialect_named(name: str) -> Dialect:
    """The dialect SQLAlchemy calls ``name`` (an engine's ``dialect.name``)."""
    dialect = find_dialect(name)
    if dialect is None:
        raise ConfigError(f"unsupported database {name!r}: the SQL adapter serves {_served()}")
    return dialect


def dialect_of_url(url: str | sa.URL) -> tuple[Dialect, sa.URL]:
    """The dialect of a database URL, and the URL with the driver it is served through."""
    try:
        parsed = sa.make_url(url)
    except (sa_exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        *others, last = [dialect.url_form for dialect in registered().values()]
        raise ConfigError(
            f"the database URL is not valid (expected {', '.join(others)} or {last})"
        ) from None
    scheme, _, driver = parsed.drivername.partition("+")
    for dialect in registered().values():
        if scheme in dialect.schemes:
            return dialect, dialect.driver_url(parsed, driver)
    raise ConfigError(f"unsupported database {scheme!r}: the SQL adapter serves {_served()} URLs")


def _served() -> str:
    *others, last = [dialect.url_prefix for dialect in registered().values()]
    return f"{', '.join(others)} and {last}" if others else last


def text_literal(dialect: sa.engine.Dialect, literal: Callable[[str], str]) -> Callable[[str], str]:
    """``literal`` as DDL run through ``exec_driver_sql`` must hold it: where
    the driver's placeholders are ``%`` (psycopg, PyMySQL), each ``%``
    doubled, as SQLAlchemy's ``quote()`` doubles it in identifiers. Left
    single, a column named ``a%b`` reached the capture trigger's text mangled."""
    if dialect.paramstyle in ("format", "pyformat"):
        return lambda text: literal(text).replace("%", "%%")
    return literal
