"""Capture for a Django project: the database records every write of a served model.

``ablo-connector migrate --django mysite.settings --capture`` installs the
SQL adapter's capture triggers (see ``connector/adapters/sql/capture.py``)
on the tables of the models ``settings.ABLO`` serves (not those with
``"capture": False``), with what they record mapped from the Django models:
the table (``db_table``), the columns of the served fields (exclusions and
renames applied; a foreign key's ``_id`` column), the primary key's column,
and the model's wire name. ``--remove-capture`` removes them. The install,
its bookkeeping in ``ablo_capture`` and the drift check are the SQL
adapter's own code, run on a connection Django opens with its own settings.

Once a served model's table is captured, every write to it reaches
``events`` exactly once, through the trigger: ``QuerySet.update()``,
``bulk_create()``, a ``SET_NULL`` cascade, raw SQL, a ``psql`` session. The
signal handlers (:mod:`.outbox`) step aside for a captured table (they look
for its triggers in the writer's transaction), and a connector commit tells
the triggers which rows it writes and records itself, as the SQL adapter's
commits do. :func:`converted` turns what a trigger stored into what
``load`` answers, with Django's own conversions.

SQLite and PostgreSQL; elsewhere ``--capture`` refuses and the signals record
the ORM's writes as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from ...errors import ConfigError
from ..sql.capture import (
    CONTEXT_TABLE,
    CaptureSpec,
    CommitContext,
    capture_drift,
    captured_models,
    install_capture,
    is_captured,
    remove_capture,
    require_capture,
    untagged,
)
from ..sql.models import snake_to_camel
from ..sql.values import to_json_value
from .served import DjangoModel

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = [
    "CAPTURING_VENDORS",
    "begin_commit",
    "capture_specs",
    "captured_tables",
    "converted",
    "drift",
    "end_commit",
    "migrate_capture",
]

#: The databases whose triggers the Django adapter's commits and signals know.
CAPTURING_VENDORS: Final = ("sqlite", "postgresql")
_REMEDY: Final = "`ablo-connector migrate --django SETTINGS --capture`"
# The trigger names capture.CaptureSpec gives: ablo_capture_<12 hex digits>[_kind].
_TRIGGER_PREFIX: Final = "ablo_capture_"


def capture_specs(models: Mapping[str, DjangoModel]) -> dict[str, CaptureSpec]:
    """What the triggers of each served model record, from its Django model
    (every model, those with ``"capture": False`` included: see :func:`wanted`)."""
    specs = {}
    for name, served in models.items():
        archived = served.fields.get("archivedAt")
        specs[name] = CaptureSpec(
            model=name,
            schema=None,
            table=served.model._meta.db_table,
            id_column=served.id.field.column,
            columns=tuple(field.field.column for field in served.fields.values()),
            archived_column=archived.field.column if archived is not None else None,
        )
    return specs


def wanted(models: Mapping[str, DjangoModel]) -> set[str]:
    return {name for name, served in models.items() if served.capture}


def _engine(using: str) -> sa.Engine:
    """A SQLAlchemy engine on the connections Django opens for ``using`` (its
    own settings, options and driver), one connection at a time."""
    import sqlalchemy as sa
    from django.db import connections

    wrapper = connections[using]
    vendor = wrapper.vendor
    if vendor not in CAPTURING_VENDORS:
        raise ConfigError(
            f"capture of a Django project is available on SQLite and PostgreSQL, not on "
            f"{wrapper.display_name} (the signals record the ORM's writes there)"
        )
    if vendor == "sqlite":
        # The SQL adapter's own SQLite engine on the same file (Django's
        # connections parse timestamps, which SQLAlchemy reads itself).
        from ..sql.engines import create_database_engine

        path = str(wrapper.settings_dict["NAME"])
        return create_database_engine(sa.URL.create("sqlite", database=path), must_exist=True)

    def connect() -> Any:
        return wrapper.get_new_connection(wrapper.get_connection_params())

    return sa.create_engine(
        f"postgresql+{wrapper.Database.__name__}://", creator=connect, poolclass=sa.NullPool
    )


def migrate_capture(
    models: Mapping[str, DjangoModel], using: str, *, remove: bool = False
) -> list[str]:
    """Install or bring up to date the capture of every served model (not
    those with ``"capture": False``, whose capture is removed), or, with
    ``remove``, remove every capture; each change made."""
    from ..sql.dialects import dialect_named

    engine = _engine(using)
    try:
        dialect = require_capture(dialect_named(engine.dialect.name))
        if remove:
            return remove_capture(engine, dialect)
        specs = capture_specs(models)
        return install_capture(engine, dialect, dict(specs), wanted(models))
    finally:
        engine.dispose()


def drift(models: Mapping[str, DjangoModel], using: str) -> tuple[list[str], dict[str, str]]:
    """The served models captured, and per capture that no longer matches
    its model one line saying what differs and what to run (nothing where
    the database has no capture)."""
    from django.db import connections

    if connections[using].vendor not in CAPTURING_VENDORS:
        return [], {}
    engine = _engine(using)
    try:
        with engine.connect() as connection:
            specs: dict[str, Any] = dict(capture_specs(models))
            captured = sorted(set(captured_models(connection)) & set(models))
            return captured, capture_drift(connection, specs, _REMEDY)
    finally:
        engine.dispose()


# ------------------------------------------------------------ in the writer's transaction


def captured_tables(connection: Any, models: Iterable[DjangoModel]) -> set[str]:
    """The tables of ``models`` that have capture triggers, as the writer's
    transaction sees them (a catalog read: it never fails for a table without them)."""
    served = {model.model._meta.db_table: model for model in models}
    if not served or connection.vendor not in CAPTURING_VENDORS:
        return set()
    names = sorted(served)
    marks = ", ".join(["%s"] * len(names))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Under READ COMMITTED each statement sees the catalog as it is.
            # A REPEATABLE READ or SERIALIZABLE transaction sees pg_trigger as
            # it was at its snapshot, while the triggers of a capture installed
            # or removed since fire, or do not, as they are now: there the
            # model's trigger function (installed and removed with them) is
            # looked up by name instead, through the catalog cache, which does
            # not keep to the snapshot.
            quote = connection.ops.quote_name
            cursor.execute(
                "SELECT x.n FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY "
                "AS x(tbl, fn, n) WHERE CASE current_setting('transaction_isolation') "
                "WHEN 'read committed' THEN EXISTS (SELECT FROM pg_trigger t WHERE "
                "t.tgrelid = to_regclass(x.tbl) AND starts_with(t.tgname, %s)) "
                "ELSE to_regprocedure(x.fn) IS NOT NULL END",
                [
                    [quote(table) for table in names],
                    [f"{quote(_trigger_name(served[table]))}()" for table in names],
                    _TRIGGER_PREFIX,
                ],
            )
            return {names[int(row[0]) - 1] for row in cursor.fetchall()}
        cursor.execute(
            "SELECT DISTINCT tbl_name FROM sqlite_master WHERE type = 'trigger' "
            f"AND tbl_name IN ({marks}) AND substr(name, 1, %s) = %s",
            [*names, len(_TRIGGER_PREFIX), _TRIGGER_PREFIX],
        )
        return {str(row[0]) for row in cursor.fetchall()}


def _trigger_name(served: DjangoModel) -> str:
    return capture_specs({served.name: served})[served.name].trigger_name


def begin_commit(connection: Any, context: CommitContext) -> None:
    """Tell the triggers which rows a connector commit writes (and records
    itself): what the SQL adapter's dialects do, on Django's cursor."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Transaction-local: the deferred triggers read it at this COMMIT.
            cursor.execute("SELECT set_config('ablo.commit', %s, true)", [context.as_json()])
        else:
            cursor.executemany(
                f"INSERT INTO {CONTEXT_TABLE} (model, entity_id) VALUES (%s, %s)",
                sorted(context.rows),
            )


def end_commit(connection: Any, context: CommitContext) -> None:
    """After the commit's last write: SQLite's context must not outlive it."""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {CONTEXT_TABLE}")


def entity_texts(connection: Any, served: DjangoModel, raw_id: str, key: Any) -> set[str]:
    """A row's id as a request gives it and as the database casts its column to text."""
    texts = {raw_id}
    prepared = served.id.field.get_db_prep_value(key, connection, prepared=False)
    if prepared is not None:
        texts.add(str(prepared))
    return texts


# ------------------------------------------------------------ reading what a trigger stored


def converted(
    connection: Any, models: Mapping[str, DjangoModel], rows: Sequence[dict[str, Any]]
) -> None:
    """Each captured outbox row's ``data`` (and ``entity_id``) as ``load``
    answers them: the same fields, Django's own conversions. ``rows`` are
    outbox rows by column, ``data`` parsed; captured ones are changed in place."""
    pending = [row for row in rows if is_captured(row["data"])]
    for name in dict.fromkeys(row["model"] for row in pending):
        mine = [row for row in pending if row["model"] == name]
        served = models.get(name)
        if served is None:  # not served (any more): its columns under field names
            for row in mine:
                raw = row["data"][0]
                row["data"] = to_json_value(
                    {snake_to_camel(k): untagged(v) for k, v in raw.items()}
                )
            continue
        if connection.vendor == "postgresql":
            typed = _typed_by_postgresql(connection, served, [row["cursor"] for row in mine])
        else:
            typed = {
                row["cursor"]: {column: untagged(v) for column, v in row["data"][0].items()}
                for row in mine
            }
        for row in mine:
            recorded = row["data"][0]
            values = typed[row["cursor"]]
            data = {
                field.wire: _from_database(connection, field.field, values[field.field.column])
                for field in served.fields.values()
                if field.field.column in recorded
            }
            row["data"] = to_json_value(data)
            if "id" in data and connection.vendor != "postgresql":
                row["entity_id"] = str(row["data"]["id"])
    for row in rows:
        if row["type"] == "DELETE" and str(row["id"]).startswith("capture:"):
            served = models.get(row["model"])
            if served is not None and connection.vendor != "postgresql":
                try:
                    value = _from_database(connection, served.id.field, row["entity_id"])
                except (TypeError, ValueError, ArithmeticError):
                    continue
                row["entity_id"] = str(to_json_value(value))


def _typed_by_postgresql(
    connection: Any, served: DjangoModel, cursors: Sequence[int]
) -> dict[int, dict[str, Any]]:
    """The rows the triggers stored, read back as records of the table's own
    type: every value as the driver reads it from the table itself."""
    quote = connection.ops.quote_name
    columns = [field.field.column for field in served.fields.values()]
    table = quote(served.model._meta.db_table)
    statement = (
        f"SELECT o.{quote('cursor')}, {', '.join(f'c.{quote(c)}' for c in columns)} "
        f"FROM {quote('ablo_outbox')} o CROSS JOIN LATERAL "
        f"jsonb_populate_record(NULL::{table}, o.data -> 0) c "
        f"WHERE o.{quote('cursor')} = ANY(%s)"
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, [list(cursors)])
        found = cursor.fetchall()
    return {row[0]: dict(zip(columns, row[1:], strict=True)) for row in found}


def _from_database(connection: Any, field: Any, value: Any) -> Any:
    """``value`` as the driver read it, through the converters Django's
    compiler applies to the field's column (the backend's, then the field's)."""
    column = field.get_col(field.model._meta.db_table)
    converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
    for converter in converters:
        value = converter(value, column, connection)
    return value
