"""Capture: the database itself records every write to a served table.

``migrate --capture`` installs, per captured model, what makes the database
write one ``ablo_outbox`` event for each row an INSERT, UPDATE or DELETE
changes, in the writer's own transaction (triggers; each database's DDL is
its dialect's; on MySQL and MariaDB the triggers stage each change in
``ablo_capture_pending`` and the connector moves the committed ones into the
outbox, see that dialect). The application's writes (its handlers, an
admin, ``psql``) then reach the engine as the connector's own do. An UPDATE
that changes a row's id is recorded as a DELETE of the old id and a CREATE
of the new one.

The connector's own commits write their events themselves, exactly as on a
table without capture (one per operation that found its row, ``id``
``correlationId:index``, with its ``transactionId``: a no-op UPDATE too, as
the engine's reference adapters do), under the same lock and sequence the
triggers use: the commit tells the triggers which rows it writes (see
:class:`CommitContext`), and they leave those rows to it, so each change is
recorded once, by one ordering mechanism.

What a trigger stores as ``data`` is the row as the database holds it,
column by column, wrapped in a one-element JSON array: a served row is always
a JSON object, so an array is never mistaken for one. ``events`` turns it
into exactly what ``load`` answers (field names, the same conversions) with
the model's current reflection (:func:`captured_data`), so the conversion is
written once, in Python, for every database.

Which models are captured, and for which columns, is kept in
``ablo_capture`` (one row per model, with a signature of what its triggers
record), so ``migrate --capture`` knows what to change and ``run`` notices a
capture that no longer matches its table or the map.

A handler over its own database (a custom ``DataSource``) uses the same
triggers through the public helpers at the end of this module: the DDL for a
table it names (:func:`table_capture_statements`), the bracket its own
commits write their events in (:func:`own_events`, :func:`write_own_events`)
and the decoding of what a trigger stored (:func:`captured_row`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ...errors import ConfigError
from .tables import outbox
from .values import to_json_row

if TYPE_CHECKING:
    from .dialects import Dialect
    from .models import ServedModel

__all__ = [
    "CAPTURE_TABLE",
    "CONTEXT_TABLE",
    "STAGING_TABLE",
    "CaptureSpec",
    "CommitContext",
    "capture_drift",
    "capture_installed",
    "capture_script",
    "capture_sql",
    "capture_spec",
    "captured_data",
    "captured_models",
    "captured_row",
    "install_capture",
    "require_capture",
    "own_events",
    "remove_capture",
    "remove_table_capture_statements",
    "table_capture_statements",
    "write_own_events",
]

CAPTURE_TABLE: Final = "ablo_capture"
# Part of each capture's signature: a new version of the triggers' DDL makes
# ``run`` report every capture installed by an older one, and ``migrate
# --capture`` reinstall it.
_TRIGGER_VERSION: Final = 2
#: Where a SQLite commit tells its triggers which operation runs (no session variables there).
CONTEXT_TABLE: Final = "ablo_capture_context"
#: Where MySQL's and MariaDB's triggers stage each change until the connector
#: moves it into the outbox (see the MySQL dialect).
STAGING_TABLE: Final = "ablo_capture_pending"
# Staged rows moved per transaction when migrate empties the staging table.
_MOVE_BATCH: Final = 1000

capture_table: Final = sa.Table(
    CAPTURE_TABLE,
    sa.MetaData(),
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("schema_name", sa.Text),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("trigger_name", sa.Text, nullable=False),
    sa.Column("columns", sa.Text, nullable=False),  # JSON: the columns its triggers record
    sa.Column("signature", sa.Text, nullable=False),
    sa.Column("installed_at", sa.DateTime(timezone=True)),
)


@dataclass(frozen=True, slots=True)
class CaptureSpec:
    """What one model's triggers record: its table, id and served columns."""

    model: str
    schema: str | None
    table: str
    id_column: str
    columns: tuple[str, ...]  # every served column, the id's included
    archived_column: str | None
    trigger_name: str = field(init=False)
    signature: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(self.model.encode()).hexdigest()[:12]
        object.__setattr__(self, "trigger_name", f"ablo_capture_{digest}")
        shape = [
            _TRIGGER_VERSION,
            self.model,
            self.schema,
            self.table,
            self.id_column,
            list(self.columns),
            self.archived_column,
        ]
        signature = hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]
        object.__setattr__(self, "signature", signature)


def _spec_of(model: ServedModel | CaptureSpec) -> CaptureSpec:
    """A model's spec; one given as its spec (the Django adapter's models) as it is."""
    return model if isinstance(model, CaptureSpec) else capture_spec(model)


def capture_spec(served: ServedModel) -> CaptureSpec:
    archived = served.archived_at
    return CaptureSpec(
        model=served.name,
        schema=served.table.schema,
        table=served.table.name,
        id_column=served.id.name,
        columns=tuple(column.name for column in served.selected),
        archived_column=archived.name if archived is not None else None,
    )


@dataclass(frozen=True, slots=True)
class _Installed:
    model: str
    schema: str | None
    table: str
    trigger_name: str
    columns: tuple[str, ...]
    signature: str


def capture_installed(connection: sa.Connection) -> bool:
    """Whether ``ablo_capture`` exists, as far as the connection's user can see."""
    from .dialects import dialect_named

    try:
        return sa.inspect(connection).has_table(CAPTURE_TABLE)
    except sa_exc.DBAPIError as error:
        # MySQL answers "denied", not "no such table", for a table the user
        # has no privilege on, whether it exists or not: a user granted what
        # --print-grants prints before capture was installed.
        if not dialect_named(connection.dialect.name).lacks_privilege(error.orig):
            raise
        return False


def _installed(connection: sa.Connection) -> dict[str, _Installed]:
    if not capture_installed(connection):
        return {}
    found = {}
    for row in connection.execute(sa.select(capture_table)):
        found[row.model] = _Installed(
            row.model,
            row.schema_name,
            row.table_name,
            row.trigger_name,
            tuple(json.loads(row.columns)),
            row.signature,
        )
    return found


def captured_models(connection: sa.Connection) -> dict[str, str]:
    """The models capture is installed for, with the signature of what it records."""
    return {model: installed.signature for model, installed in _installed(connection).items()}


def _difference(old: Sequence[str], new: Sequence[str]) -> str:
    added = [c for c in new if c not in old]
    gone = [c for c in old if c not in new]
    parts = [f"column {c!r} added" for c in added] + [
        f"column {c!r} no longer served" for c in gone
    ]
    return ", ".join(parts) or "its table or id column changed"


def install_capture(
    engine: sa.Engine,
    dialect: Dialect,
    served: Mapping[str, ServedModel | CaptureSpec],
    wanted: set[str],
) -> list[str]:
    """Install or bring up to date the capture of every model in ``wanted``,
    remove it from every other; returns each change made (empty: nothing to do)."""
    require_capture(dialect)
    changes: list[str] = []
    with engine.begin() as connection:
        _refuse_uncapturable(connection, dialect, [_spec_of(served[name]) for name in wanted])
        for statement in dialect.capture_setup_statements():
            connection.exec_driver_sql(statement)
        installed = _installed(connection)
        for name in sorted(set(installed) - wanted):
            gone = installed[name]
            for statement in dialect.remove_capture_statements(
                gone.schema, gone.table, gone.trigger_name
            ):
                connection.exec_driver_sql(statement)
            connection.execute(capture_table.delete().where(capture_table.c.model == name))
            changes.append(f"removed the capture of model {name!r} (table {gone.table})")
        for name in sorted(wanted):
            spec = _spec_of(served[name])
            old = installed.get(name)
            if old is not None and old.signature == spec.signature:
                continue
            in_place = old is not None and (old.schema, old.table) == (spec.schema, spec.table)
            if old is not None and not (in_place and dialect.replaces_capture(connection)):
                for statement in dialect.remove_capture_statements(
                    old.schema, old.table, old.trigger_name
                ):
                    connection.exec_driver_sql(statement)
            for statement in dialect.install_capture_statements(connection, spec):
                connection.exec_driver_sql(statement)
            connection.execute(capture_table.delete().where(capture_table.c.model == name))
            connection.execute(
                capture_table.insert().values(
                    model=name,
                    schema_name=spec.schema,
                    table_name=spec.table,
                    trigger_name=spec.trigger_name,
                    columns=json.dumps(list(spec.columns)),
                    signature=spec.signature,
                    installed_at=dt.datetime.now(dt.UTC),
                )
            )
            if old is None:
                changes.append(f"installed the capture of model {name!r} (table {spec.table})")
            else:
                changes.append(
                    f"updated the capture of model {name!r} (table {spec.table}): "
                    f"{_difference(old.columns, spec.columns)}"
                )
    _move_staged(engine, dialect)
    return changes


def _move_staged(engine: sa.Engine, dialect: Dialect) -> None:
    """Move into the outbox every row the triggers staged (MySQL, MariaDB),
    as the connector would: a model no longer captured, or a staging table
    about to be dropped, leaves nothing behind."""
    if not dialect.stages_capture:
        return
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table(STAGING_TABLE):
            return

    def move(connection: sa.Connection) -> int:
        return dialect.move_captured(connection, _MOVE_BATCH)

    while dialect.run_write(engine, move, ()) == _MOVE_BATCH:
        pass


def _refuse_uncapturable(
    connection: sa.Connection, dialect: Dialect, specs: Iterable[CaptureSpec]
) -> None:
    """A ConfigError naming the first table the database cannot capture
    (before anything changes: MySQL's DDL commits as it goes)."""
    for spec in sorted(specs, key=lambda spec: spec.model):
        problem = dialect.capture_problem(connection, spec)
        if problem is not None:
            raise ConfigError(problem)


def remove_capture(engine: sa.Engine, dialect: Dialect) -> list[str]:
    """Remove every trigger capture installed, and its bookkeeping."""
    changes: list[str] = []
    with engine.begin() as connection:
        installed = _installed(connection)
        for name, old in sorted(installed.items()):
            for statement in dialect.remove_capture_statements(
                old.schema, old.table, old.trigger_name
            ):
                connection.exec_driver_sql(statement)
            changes.append(f"removed the capture of model {name!r} (table {old.table})")
        if not dialect.stages_capture:
            _tear_down(connection, dialect)
    if dialect.stages_capture:
        # The triggers are gone: what they staged reaches the outbox before its table goes.
        _move_staged(engine, dialect)
        with engine.begin() as connection:
            _tear_down(connection, dialect)
    return changes


def _tear_down(connection: sa.Connection, dialect: Dialect) -> None:
    for statement in dialect.capture_teardown_statements():
        connection.exec_driver_sql(statement)


def require_capture(dialect: Dialect) -> Dialect:
    """``dialect``, or a ConfigError saying why its database has no capture
    (before ``migrate --capture`` changes anything)."""
    if dialect.capture_state_create is None:
        raise ConfigError(dialect.capture_refusal or f"capture is not available on {dialect.name}")
    return dialect


def capture_drift(
    connection: sa.Connection,
    served: Mapping[str, ServedModel | CaptureSpec],
    remedy: str = "`ablo-connector migrate --capture` with the same --models",
) -> dict[str, str]:
    """Per captured model whose capture no longer matches its table or the
    map, one line saying what differs and what to run (``remedy``)."""
    drift: dict[str, str] = {}
    specs = {name: _spec_of(model) for name, model in served.items()}
    tables = {(spec.schema, spec.table): name for name, spec in specs.items()}
    for name, old in _installed(connection).items():
        model = served.get(name)
        if model is None:
            # Its table served under another name (the map renamed the model):
            # the triggers would record its writes under the old name.
            other = tables.get((old.schema, old.table))
            if other is not None:
                drift[other] = (
                    f"table {old.table} is captured as model {name!r}, but served as model "
                    f"{other!r}: run {remedy}"
                )
            continue
        spec = specs[name]
        if spec.signature != old.signature:
            drift[name] = (
                f"the capture of model {name!r} (table {spec.table}) no longer matches it "
                f"({_difference(old.columns, spec.columns)}): run {remedy}"
            )
    return drift


@dataclass(frozen=True, slots=True)
class CommitContext:
    """The rows a connector commit writes, by (model, id as the database
    casts it to text): the capture triggers leave these to the commit, which
    writes their events itself."""

    rows: frozenset[tuple[str, str]]

    def keys(self) -> list[str]:
        """Each row as the triggers look it up: ``model``, a newline, the id."""
        return sorted(f"{model}\n{entity}" for model, entity in self.rows)

    def as_json(self) -> str:
        return json.dumps(dict.fromkeys(self.keys(), True), separators=(",", ":"))


def is_captured(data: Any) -> bool:
    """Whether an outbox ``data`` is a captured row (a one-element array)."""
    return isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict)


def untagged(value: Any) -> Any:
    """A captured SQLite value as the database holds it: REAL values travel
    as their exact text, BLOBs as hex (JSON cannot hold either faithfully)."""
    if isinstance(value, dict):
        if "real" in value:
            return float(value["real"])
        if "blob" in value:
            return bytes.fromhex(value["blob"])
    return value


def captured_data(
    served: ServedModel, raw: Mapping[str, Any], processors: Mapping[str, Any]
) -> dict[str, Any]:
    """A captured row (column → value as stored) as ``load`` answers it:
    field names, the driver's and SQLAlchemy's conversions, JSON-ready. A
    column the trigger did not record (added after capture was installed)
    is left out rather than shown as null."""
    values = []
    for column in served.selected:
        value = untagged(raw.get(column.name))
        processor = processors.get(column.name)
        values.append(processor(value) if processor is not None and value is not None else value)
    fields = served.values_to_fields(values)
    recorded = {served.fields[name] for name in raw if name in served.fields}
    return to_json_row({key: value for key, value in fields.items() if key in recorded})


def result_processors(served: ServedModel, dialect: sa.Dialect) -> dict[str, Any]:
    """Each served column's result processor (what SQLAlchemy applies to what the driver read)."""
    found = {}
    for column in served.selected:
        processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
        if processor is not None:
            found[column.name] = processor
    return found


def capture_sql(engine: sa.Engine, models: Any) -> list[str]:
    """``migrate --print-sql --capture``: the statements ``migrate --capture``
    would run to capture, from nothing, every model ``run`` would serve with
    ``models`` (for the tables' owner to run), bookkeeping included."""
    dialect, served, wanted = _wanted(engine, models)
    statements = list(dialect.capture_setup_statements())
    with engine.connect() as connection:
        _refuse_uncapturable(connection, dialect, [capture_spec(served[name]) for name in wanted])
        for name in sorted(wanted):
            spec = capture_spec(served[name])
            statements += dialect.install_capture_statements(connection, spec)
            bookkeeping = capture_table.insert().values(
                model=name,
                schema_name=spec.schema,
                table_name=spec.table,
                trigger_name=spec.trigger_name,
                columns=json.dumps(list(spec.columns)),
                signature=spec.signature,
            )
            compiled = bookkeeping.compile(engine, compile_kwargs={"literal_binds": True})
            statements.append(str(compiled))
    if engine.dialect.paramstyle in ("format", "pyformat"):
        # Built to run through the driver, which reads %% as one %; printed
        # for the database's own client, which reads no placeholder.
        statements = [statement.replace("%%", "%") for statement in statements]
    return statements


def capture_script(engine: sa.Engine, models: Any) -> list[str]:
    """:func:`capture_sql` as lines the database's own client runs (MySQL's
    triggers are compound statements: its client needs a ``DELIMITER``)."""
    from .dialects import dialect_named

    statements = capture_sql(engine, models)
    return dialect_named(engine.dialect.name).script(statements)


def _wanted(engine: sa.Engine, models: Any) -> tuple[Dialect, dict[str, ServedModel], set[str]]:
    from .dialects import dialect_named
    from .models import ModelMap
    from .reflection import reflect_models

    dialect = require_capture(dialect_named(engine.dialect.name))
    with engine.connect() as connection:
        specs = models or ModelMap.of_tables(sa.inspect(connection).get_table_names())
        served, problems, _ = reflect_models(
            connection, specs, dialect, skip_without_id=models is None
        )
    if problems:
        raise ConfigError(next(iter(problems.values())))
    return dialect, served, {name for name in served if specs[name].capture}


def migrate_capture(engine: sa.Engine, models: Any, *, remove: bool = False) -> list[str]:
    """``migrate --capture``: capture every model ``run`` would serve with
    ``models`` (a :class:`~.models.ModelMap` or None), except those whose map
    says ``capture = false``; ``remove``: remove every capture instead."""
    from .dialects import dialect_named

    dialect = require_capture(dialect_named(engine.dialect.name))
    if remove:
        return remove_capture(engine, dialect)
    dialect, served, wanted = _wanted(engine, models)
    return install_capture(engine, dialect, served, wanted)


# ------------------------------------------------------------ for handler authors


def _capturing_dialect(connection: sa.Connection) -> Dialect:
    from .dialects import dialect_named

    dialect = require_capture(dialect_named(connection.dialect.name))
    if not dialect.capture_helpers:
        raise ConfigError(
            "the capture helpers for a handler's own tables are available on SQLite and "
            "PostgreSQL; on MySQL and MariaDB, serve the table through the SQL adapter and "
            "run `ablo-connector migrate --capture`"
        )
    return dialect


def table_capture_statements(
    connection: sa.Connection,
    table: str,
    *,
    model: str,
    columns: Sequence[str],
    id_column: str = "id",
    archived_column: str | None = None,
    schema: str | None = None,
) -> list[str]:
    """The DDL that makes the database record every committed INSERT, UPDATE
    and DELETE on ``table`` into ``ablo_outbox`` as events of ``model``, in
    the writer's own transaction: the triggers ``migrate --capture`` installs,
    for a table a handler names rather than a served model.

    ``columns`` are the columns an event's ``data`` records (a write that
    changes none of them is no event); ``id_column`` gives ``entityId``; an
    UPDATE of only ``archived_column`` is ARCHIVE or UNARCHIVE. The outbox
    must exist (:func:`~connector.adapters.sql.migrate` creates it): run the
    statements in one transaction, as the table's owner. What a trigger
    stores as ``data`` is the row as the database holds it, column by
    column: :func:`captured_row` reads it back. SQLite and PostgreSQL.
    """
    dialect = _capturing_dialect(connection)
    if id_column not in columns:
        raise ConfigError(f"the id column {id_column!r} must be one of the captured columns")
    if archived_column is not None and archived_column not in columns:
        raise ConfigError(
            f"the archived column {archived_column!r} must be one of the captured columns"
        )
    spec = CaptureSpec(
        model=model,
        schema=schema,
        table=table,
        id_column=id_column,
        columns=tuple(columns),
        archived_column=archived_column,
    )
    return dialect.capture_setup_statements() + dialect.install_capture_statements(connection, spec)


def remove_table_capture_statements(
    connection: sa.Connection, table: str, *, model: str, schema: str | None = None
) -> list[str]:
    """The DDL that removes what :func:`table_capture_statements` installed
    on ``table`` for ``model`` (safe to run when it is not there)."""
    dialect = _capturing_dialect(connection)
    spec = CaptureSpec(model, schema, table, "id", ("id",), None)
    return dialect.remove_capture_statements(schema, table, spec.trigger_name)


@contextlib.contextmanager
def own_events(connection: sa.Connection, rows: Iterable[tuple[str, str]]) -> Iterator[None]:
    """Around a handler's commit that writes the events of ``rows`` ((model,
    id as text)) itself, with its ``correlationId``: inside, the capture
    triggers leave those rows to it, so each change is recorded once. Write
    the events with :func:`write_own_events`, in the same transaction."""
    dialect = _capturing_dialect(connection)
    context = CommitContext(frozenset(rows))
    dialect.begin_captured_commit(connection, context)
    yield
    dialect.end_captured_commit(connection, context)


def write_own_events(connection: sa.Connection, events: Sequence[Mapping[str, Any]]) -> None:
    """Insert a commit's own ``events`` (``ablo_outbox`` rows: ``id``,
    ``model``, ``entity_id``, ``type``, ``data``, ``correlation_id``,
    ``transaction_id``, ``occurred_at``) under the lock that keeps cursors
    in commit order with the triggers' (a reader paging by cursor never
    skips one). Call it after the commit's last row change."""
    if not events:
        return
    _capturing_dialect(connection).lock_commit_order(connection)
    connection.execute(outbox.insert(), list(events))


def captured_row(data: Any) -> dict[str, Any] | None:
    """What a capture trigger stored as an event's ``data``: the row, column
    → value as the database holds it (None for an event a commit wrote
    itself, or a DELETE). ``data`` as read from ``ablo_outbox``, parsed or
    JSON text."""
    if isinstance(data, str):
        data = json.loads(data)
    if not is_captured(data):
        return None
    return {column: untagged(value) for column, value in data[0].items()}
