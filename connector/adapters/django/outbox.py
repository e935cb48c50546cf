"""The ledger and the outbox through Django's own database connection.

The same tables, columns and cursors as the SQL adapter's (see
``connector/adapters/sql/tables.py``), written in the transaction of the
write they record; the statements are plain SQL on Django's cursor, its
``%s`` placeholders on every backend.

Every write of a served model made through the ORM, the application's
(views, admin, management commands) and the connector's alike, is recorded
here in its own transaction: :func:`capture_writes` connects ``post_save``
and ``post_delete`` for the served models, and makes each such model's
``save_base`` run inside ``transaction.atomic`` (Django saves a model
without a parent in autocommit, and sends ``post_save`` after the row is
committed). A connector commit writes its operations' events itself, with
their ``correlationId`` and ``transactionId``; the signal handlers leave
those rows alone (:data:`COMMITTING` says which), so each change is
recorded once. Where a served model's table is captured (capture triggers,
see :mod:`.capture`), the handlers leave every write to it to the triggers.

The commit-order lock is taken when a transaction writes its first event
and held until it ends (PostgreSQL's advisory transaction lock, MySQL's
named lock; SQLite serializes writers anyway). An application transaction
that saves a served model early and then runs for long makes the other
writers of served models wait for it: keep such transactions short.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ...errors import SourceError
from ..kit.outbox import OUTBOX_COLUMNS
from ..sql.values import json_text, to_json_value
from .served import DjangoModel

__all__ = [
    "COMMITTING",
    "CommitRecord",
    "capture_writes",
    "insert_events",
    "lock_commit_order",
    "read_row",
    "release_commit_order",
]

# The PostgreSQL advisory lock every outbox writer takes (the SQL adapter's
# and its triggers' too): the bytes of "abloOutb" as a signed 64-bit integer.
OUTBOX_LOCK: Final = int.from_bytes(b"abloOutb", "big", signed=True)
# MySQL and MariaDB: the SQL adapter's named lock, held until the end of the
# transaction (released at commit or rollback, see _release_mysql_lock).
_MYSQL_LOCK: Final = "LEFT(CONCAT('ablo_outbox.', DATABASE()), 64)"
_MYSQL_LOCK_WAIT_SECONDS: Final = 30
_INSERTED: Final = ", ".join(
    column for column in OUTBOX_COLUMNS if column not in ("cursor", "created_at")
)


@dataclass(slots=True)
class CommitRecord:
    """The connector's commit under way in this thread.

    ``current`` is the row its operation under way writes, whose event the
    commit writes itself. Any other row the ORM changes meanwhile (a cascade,
    an application's signal handler) is recorded in ``others``, in order,
    for the commit to write after the events of the operations before it
    (:meth:`take_others`).
    """

    using: str
    correlation_id: str
    current: tuple[type[Any], str] | None = None
    # The rows the capture triggers leave to this commit (its CommitContext's):
    # a change to one of them that is not the operation's own (a later
    # operation's cascade, say) is recorded here, or by no one.
    left_to_commit: frozenset[tuple[str, str]] = frozenset()
    # Each event with its marker among the connection's on_commit callbacks.
    others: list[tuple[dict[str, Any], Callable[[], None]]] = field(default_factory=list)

    def add_other(self, connection: Any, event: dict[str, Any]) -> None:
        """Record ``event``, a row's change made in the commit's transaction,
        maybe inside a savepoint (``transaction.atomic``) the application will
        roll back: Django forgets the on_commit callbacks registered in a
        savepoint rolled back, and so does :meth:`take_others` the event."""

        def marker() -> None:  # a no-op: its presence is what counts
            return None

        connection.on_commit(marker)
        self.others.append((event, marker))

    def take_others(self, connection: Any) -> list[dict[str, Any]]:
        """The events recorded since the last call, less those whose savepoint
        was rolled back."""
        pending = {id(entry[1]) for entry in connection.run_on_commit}
        kept = [event for event, marker in self.others if id(marker) in pending]
        self.others.clear()
        return kept


#: Set by a connector commit, in the thread that runs it.
COMMITTING: contextvars.ContextVar[CommitRecord | None] = contextvars.ContextVar(
    "ablo_django_commit", default=None
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def read_row(served: DjangoModel, pk: Any, using: str) -> dict[str, Any] | None:
    """The row as ``load`` answers it: read from the database, each field's JSON value."""
    fields = list(served.fields.values())
    found = (
        served.model._base_manager.using(using)
        .filter(pk=pk)
        .values_list(*(f.attname for f in fields))
        .first()
    )
    if found is None:
        return None
    result: dict[str, Any] = to_json_value(
        {f.wire: value for f, value in zip(fields, found, strict=True)}
    )
    return result


def lock_commit_order(connection: Any) -> None:
    """Before an outbox insert: make later writers wait until this transaction
    ends, so that cursors become visible in the order they were drawn (the
    same lock the SQL adapter takes). SQLite serializes writers already."""
    vendor = connection.vendor
    if vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [OUTBOX_LOCK])
    elif vendor == "mysql":
        # The lock belongs to the database session, which outlives a Django
        # transaction (a rolled-back one keeps it) and can be replaced under
        # the same wrapper (a closed connection frees it): what the wrapper
        # remembers is which session took it.
        if getattr(connection, "_ablo_outbox_locked", None) is not connection.connection:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT GET_LOCK({_MYSQL_LOCK}, {_MYSQL_LOCK_WAIT_SECONDS})")
                (acquired,) = cursor.fetchone()
            if acquired != 1:
                raise SourceError(
                    "source_database_timeout",
                    "the write waited too long for the outbox's commit-order lock",
                    status=504,
                )
            connection._ablo_outbox_locked = connection.connection
        # Freed when this transaction commits: registered once per transaction
        # (Django forgets what a rolled-back one registered).
        release = getattr(connection, "_ablo_outbox_release", None)
        if release is None or not any(entry[1] is release for entry in connection.run_on_commit):
            release = functools.partial(_release_mysql_lock, connection)
            connection._ablo_outbox_release = release
            connection.on_commit(release)


def release_commit_order(connection: Any) -> None:
    """After a unit of writes has ended (committed or rolled back), free
    MySQL's named lock if this session still holds it (a session-level lock
    outlives the transaction; on commit ``on_commit`` frees it already)."""
    if connection.vendor == "mysql" and not connection.in_atomic_block:
        _release_mysql_lock(connection)


def _release_mysql_lock(connection: Any) -> None:
    held = getattr(connection, "_ablo_outbox_locked", None)
    connection._ablo_outbox_locked = None
    if held is not None and held is connection.connection:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT RELEASE_LOCK({_MYSQL_LOCK})")


def insert_events(connection: Any, events: Sequence[Mapping[str, Any]]) -> None:
    """Write ``events`` (outbox rows by column name, no cursor) under the commit-order lock."""
    if not events:
        return
    lock_commit_order(connection)
    quote = connection.ops.quote_name
    columns = _INSERTED.split(", ")
    data = "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"
    placeholders = ", ".join(data if column == "data" else "%s" for column in columns)
    statement = (
        f"INSERT INTO {quote('ablo_outbox')} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({placeholders})"
    )
    with connection.cursor() as cursor:
        cursor.executemany(
            statement,
            [
                [
                    None
                    if column == "data" and event[column] is None
                    else json_text(event[column])
                    if column == "data"
                    else event[column]
                    for column in columns
                ]
                for event in events
            ],
        )


def app_event(
    served: DjangoModel, pk: Any, kind: str, data: Any, correlation_id: str | None
) -> dict[str, Any]:
    return {
        "id": f"django:{uuid.uuid4().hex}",
        "model": served.name,
        "entity_id": str(to_json_value(pk)),
        "type": kind,
        "data": data,
        "organization_id": None,
        "client_tx_id": None,
        "correlation_id": correlation_id,
        "transaction_id": None,
        "occurred_at": _now_ms(),
    }


# ------------------------------------------------------------ the signals

_SERVED: dict[type[Any], DjangoModel] = {}
_PATCHED: Final = "_ablo_atomic_save"


def _record(served: DjangoModel, instance: Any, kind: str, using: str) -> None:
    from django.db import connections

    from .capture import captured_tables

    record = COMMITTING.get()
    pk = instance.pk
    mine = record is not None and record.using == using
    if mine and record is not None and record.current == (type(instance), str(pk)):
        return  # the connector's commit writes this event itself
    connection = connections[using]
    left_to_commit = mine and record is not None and _left_to(record, served, pk)
    if not left_to_commit and captured_tables(connection, [served]):
        return  # the table's capture triggers record this write (see .capture)
    data = None if kind == "DELETE" else read_row(served, pk, using)
    if mine and record is not None:
        record.add_other(connection, app_event(served, pk, kind, data, record.correlation_id))
        return
    insert_events(connection, [app_event(served, pk, kind, data, None)])


def _left_to(record: CommitRecord, served: DjangoModel, pk: Any) -> bool:
    """Whether the capture triggers leave this row's changes to ``record``'s commit."""
    rows = record.left_to_commit
    return bool(rows) and (
        (served.name, str(pk)) in rows or (served.name, str(to_json_value(pk))) in rows
    )


def _on_save(sender: Any, instance: Any, created: bool, raw: bool, using: str, **_: Any) -> None:
    served = _SERVED.get(sender)
    if served is None or raw:  # raw: loaddata, which no one asked to replay
        return
    _record(served, instance, "CREATE" if created else "UPDATE", using)


def _on_delete(sender: Any, instance: Any, using: str, **_: Any) -> None:
    served = _SERVED.get(sender)
    if served is not None:
        _record(served, instance, "DELETE", using)


def _atomic_save_base(original: Callable[..., Any]) -> Callable[..., Any]:
    """``save_base`` inside ``transaction.atomic``, so that ``post_save`` (and
    the event it writes) is in the transaction of the row's write."""
    from django.db import router, transaction

    @functools.wraps(original)
    def save_base(self: Any, *args: Any, **kwargs: Any) -> Any:
        using = kwargs.get("using") or (args[3] if len(args) > 3 else None)
        using = using or router.db_for_write(type(self), instance=self)
        from django.db import connections

        try:
            with transaction.atomic(using=using, savepoint=False):
                return original(self, *args, **kwargs)
        finally:
            release_commit_order(connections[using])

    setattr(save_base, _PATCHED, True)
    return save_base


def capture_writes(models: Iterable[DjangoModel]) -> None:
    """Record every ORM write of ``models`` (those with ``capture``) in the
    outbox, in the writer's transaction. Call it once the apps are ready (the
    app's ``ready()``; :class:`DjangoSource` calls it too); calling it again
    changes nothing."""
    from django.db.models import signals

    for served in models:
        if not served.capture:
            continue
        model = served.model
        _SERVED.setdefault(model, served)
        if not getattr(model.__dict__.get("save_base"), _PATCHED, False):
            model.save_base = _atomic_save_base(model.save_base)
        signals.post_save.connect(
            _on_save, sender=model, weak=False, dispatch_uid=f"ablo_save_{model._meta.label}"
        )
        signals.post_delete.connect(
            _on_delete, sender=model, weak=False, dispatch_uid=f"ablo_delete_{model._meta.label}"
        )


def json_value(value: Any) -> Any:
    """A JSON column's value as a driver returns it (text on SQLite and MySQL)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
