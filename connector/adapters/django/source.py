"""A :class:`~connector.DataSource` served through a Django project's ORM.

``DjangoSource(models)`` serves the models :mod:`.served` describes (the
settings build them once Django is set up). Reads are QuerySets, with the
listing rules every adapter shares (:mod:`connector.adapters.kit.listing`)
rendered as ``Q`` objects and ``order_by``. A commit is one
``transaction.atomic()`` holding the ledger row, each operation's
``save()``/``delete()`` (so overrides, signals, defaults, ``auto_now`` and
``full_clean()`` run as for the application's writes) and the outbox events:
all of it happens or none does. The ledger row is reserved first, so a
concurrent commit with the same ``correlationId`` waits on it and then
replays the stored answer.

The ORM blocks: every operation runs in one of the source's own worker
threads, never on the event loop, with ``close_old_connections()`` before
and after, as Django does around a request. A request whose deadline passed
before a worker took it up is cancelled without running.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from ...errors import ConfigError, SourceError
from ...serve.datasource import DataSource, RequestContext
from ...serve.models import ModelNames
from ...wire.bodies import CommitRequest, CommitResult, EventsPage, ListPage, ListQuery, Operation
from ..kit import listing
from ..kit.outbox import (
    LEDGER_RETENTION,
    OUTBOX_COLUMNS,
    event_answer,
    operation_event,
    outbox_cursor,
    replayed_answer,
)
from ..sql.capture import CommitContext, is_captured
from ..sql.values import ValueRejected, checked_text, json_text, to_json_value
from .capture import begin_commit, captured_tables, converted, end_commit, entity_texts
from .outbox import (
    COMMITTING,
    CommitRecord,
    capture_writes,
    insert_events,
    json_value,
    read_row,
    release_commit_order,
)
from .served import DjangoModel, ServedField

__all__ = ["DjangoSource"]

log = logging.getLogger("connector.django")

T = TypeVar("T")

_DEFAULT_WORKERS: Final = 8
#: How long outbox events are kept once the engine has paged past them (the SQL adapter's).
DEFAULT_OUTBOX_RETENTION: Final = 7 * 24 * 3600.0
# Pruning at a probe: at most one batch of each table, at most every so often.
_PRUNE_BATCH: Final = 1000
_PRUNE_EVERY_SECONDS: Final = 10.0


class DjangoSource(DataSource):
    """Serve Django models as Ablo models: ``models`` maps each wire name to
    its :class:`DjangoModel`; ``using`` is the database alias written and read.

    Django must be set up (``django.setup()``) before it is built. Building
    it connects the capture of the served models' writes (see
    :func:`.outbox.capture_writes`), as the app's ``ready()`` does.
    """

    def __init__(
        self,
        models: Mapping[str, DjangoModel],
        *,
        using: str = "default",
        page_size: int = 100,
        max_page_size: int = 1000,
        workers: int = _DEFAULT_WORKERS,
        outbox_retention: float | None = DEFAULT_OUTBOX_RETENTION,
    ) -> None:
        if outbox_retention is not None and outbox_retention < 0:
            raise ConfigError("the outbox retention must be at least 0 seconds")
        if not models:
            raise ConfigError("DjangoSource needs at least one served model")
        if page_size < 1 or max_page_size < page_size:
            raise ConfigError("page_size must be at least 1 and at most max_page_size")
        self.models = dict(models)
        self.using = using
        self.page_size = page_size
        self.max_page_size = max_page_size
        self._names = ModelNames(
            {name: served.model.__name__ for name, served in self.models.items()},
            origin="the Django models served",
        )
        self.model_names = self._names
        self.outbox_retention = outbox_retention
        # Retention: the highest cursor the engine has paged past (0 until it asks).
        self._read_past = 0
        self._pruned_at: float | None = None
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="ablo-django")
        capture_writes(self.models.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({sorted(self.models)!r}, using={self.using!r})"

    # ------------------------------------------------------------ running ORM work

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._unit, work, args)

    def _unit(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        from django.db import DatabaseError, close_old_connections

        close_old_connections()
        try:
            return work(*args)
        except SourceError:
            raise
        except DatabaseError as error:
            raise _database_error(error) from None
        finally:
            close_old_connections()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        self.close()

    def _served(self, name: str) -> DjangoModel:
        served = self.models.get(name)
        if served is None:
            declared = self._names.resolve(name)
            if declared is None or declared not in self.models:
                raise self._names.unknown(name)
            served = self.models[declared]
        return served

    def _connection(self) -> Any:
        from django.db import connections

        return connections[self.using]

    # ------------------------------------------------------------ health

    async def probe(self) -> None:
        def ping() -> None:
            with self._connection().cursor() as cursor:
                cursor.execute("SELECT 1")

        try:
            await self._run(ping)
        except SourceError as error:
            raise SourceError("database_unreachable", error.message, status=503) from None
        now = time.monotonic()
        if self._pruned_at is None or now - self._pruned_at >= _PRUNE_EVERY_SECONDS:
            self._pruned_at = now
            try:
                await self.prune()
            except SourceError as error:
                log.warning("could not prune the outbox and ledger: %s", error.message)

    async def prune(self) -> tuple[int, int]:
        """Delete at most 1000 outbox events older than :attr:`outbox_retention`
        that the engine has paged past, and at most 1000 expired ledger rows
        (each its own short transaction); (events, ledger rows) deleted. An
        event the engine has not paged past is never deleted."""
        events = 0
        if self.outbox_retention is not None and self._read_past > 0:
            cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.outbox_retention)
            events = await self._run(_prune_outbox, self._connection, self._read_past, cutoff)
        ledger_rows = await self._run(_prune_ledger, self._connection, dt.datetime.now(dt.UTC))
        if events or ledger_rows:
            log.info("pruned %d outbox event(s) and %d ledger row(s)", events, ledger_rows)
        return events, ledger_rows

    # ------------------------------------------------------------ reads

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        served = self._served(model)
        key = _to_value(served.id, "id", id)
        return await self._run(read_row, served, key, self.using)

    async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:
        served = self._served(model)
        plan = _plan(served, query, self.page_size, self.max_page_size)
        if plan[1] == 0:
            return ListPage(rows=[])
        return await self._run(self._page, served, plan)

    def _page(self, served: DjangoModel, plan: tuple[Any, int, Any, str | None, bool]) -> ListPage:
        queryset, limit, ordering, order_field, descending = plan
        fields = list(served.fields.values())
        found = list(
            queryset.using(self.using)
            .order_by(*ordering)
            .values_list(*(f.attname for f in fields))[: limit + 1]
        )
        page = found[:limit]
        rows = [
            to_json_value({f.wire: value for f, value in zip(fields, row, strict=True)})
            for row in page
        ]
        cursor = None
        if len(found) > limit:
            last = rows[-1]
            cursor = listing.encode_cursor(
                order_field,
                descending,
                (last.get(order_field) if order_field else None, last["id"]),
                to_json_value,
            )
        return ListPage(rows=rows, next_cursor=cursor)

    # ------------------------------------------------------------ events

    async def events(
        self, cursor: str | None, limit: int | None, ctx: RequestContext
    ) -> EventsPage:
        after = outbox_cursor(cursor)
        count = min(self.page_size if limit is None else limit, self.max_page_size)
        found = await self._run(self._events, after, count)
        # Asking for what follows ``after`` says the engine has read up to it
        # (once the cursor is known to be one the outbox issued).
        self._read_past = max(self._read_past, after)
        events = [event_answer(row) for row in found]
        return EventsPage(events=events, next_cursor=events[-1]["cursor"] if events else cursor)

    def _events(self, after: int, count: int) -> Sequence[dict[str, Any]]:
        connection = self._connection()
        quote = connection.ops.quote_name
        rows: Sequence[Any] = ()
        with connection.cursor() as cursor:
            if count > 0:
                cursor.execute(
                    f"SELECT {', '.join(quote(c) for c in OUTBOX_COLUMNS)} FROM "
                    f"{quote('ablo_outbox')} WHERE {quote('cursor')} > %s "
                    f"ORDER BY {quote('cursor')} LIMIT %s",
                    [after, count],
                )
                rows = cursor.fetchall()
            if not rows and after > 0:
                cursor.execute(_last_issued(connection))
                (last,) = cursor.fetchone()
                if after > (last or 0):
                    raise SourceError(
                        "source_cursor_invalid",
                        "the events cursor is past the last event this source issued (was the "
                        "outbox recreated, truncated or restored from an older backup?)",
                    )
        found = [_outbox_row(row) for row in rows]
        if any(is_captured(row["data"]) for row in found):
            converted(connection, self.models, found)
        return tuple(found)

    # ------------------------------------------------------------ commit

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        if commit.echo is not None:
            raise SourceError(
                "source_commit_echo_not_supported",
                "the Django adapter cannot emit a PostgreSQL WAL echo",
                status=409,
            )
        if not commit.correlation_id:
            raise SourceError(
                "source_commit_requires_correlation_id", "a commit needs a correlationId"
            )
        models = [self._served(op.model) for op in commit.operations]
        rows = await self._run(self._commit, commit, models)
        return CommitResult(rows=rows)

    def _commit(self, commit: CommitRequest, models: Sequence[DjangoModel]) -> Sequence[Any]:
        from django.db import IntegrityError, transaction

        try:
            try:
                with transaction.atomic(using=self.using):
                    return self._commit_in(commit, models)
            finally:
                release_commit_order(self._connection())
        except IntegrityError as error:
            # A unique key or a foreign key, checked by the database (at the
            # latest at COMMIT: Django's foreign keys are deferred).
            raise SourceError(
                "source_constraint_violation",
                f"the commit conflicts with a constraint of the database ({_constraint(error)})",
                status=409,
            ) from None

    def _commit_in(self, commit: CommitRequest, models: Sequence[DjangoModel]) -> Sequence[Any]:
        connection = self._connection()
        key = commit.correlation_id
        assert key is not None
        now = dt.datetime.now(dt.UTC)
        if not _reserve(connection, key, commit.effective_intent_hash, now):
            return _replay(connection, key, commit.replayable_intent_hashes)
        # On a captured table the triggers leave the rows this commit writes
        # to it (see .capture): its events are written below, as everywhere.
        context = _capture_context(connection, commit.operations, models)
        if context is not None:
            begin_commit(connection, context)
        record = CommitRecord(
            self.using, key, left_to_commit=context.rows if context is not None else frozenset()
        )
        token = COMMITTING.set(record)
        # Each operation's event, after those of the rows its write changed
        # besides its own (children a DELETE cascades to, rows a signal
        # handler wrote): the feed replays the commit in the order it happened.
        events: list[dict[str, Any]] = []
        applied: list[tuple[dict[str, Any], bool]] = []
        try:
            for index, (op, served) in enumerate(zip(commit.operations, models, strict=True)):
                row, changed = self._apply(served, op, record)
                applied.append((row, changed))
                events.extend(record.take_others(connection))
                if changed:
                    events.append(operation_event(commit, index, served.name, row))
        finally:
            record.current = None
            COMMITTING.reset(token)
        if context is not None:
            end_commit(connection, context)
        rows = [row for row, _ in applied]
        insert_events(connection, events)
        quote = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {quote('ablo_idempotency')} SET response = {_json_param(connection)} "
                "WHERE client_tx_id = %s",
                [json_text(rows), key],
            )
        return rows

    def _apply(
        self, served: DjangoModel, op: Operation, record: CommitRecord
    ) -> tuple[dict[str, Any], bool]:
        """The row as it stands after ``op``, and whether ``op`` changed anything."""
        raw_id = op.id if op.id is not None else (op.input or {}).get("id")
        if not isinstance(raw_id, str) or not raw_id:
            raise SourceError(
                "source_operation_id_required", f"{op.type} on {op.model!r} needs an id"
            )
        key = _to_value(served.id, "id", raw_id)
        model = served.model
        record.current = (model, str(key))
        manager = model._base_manager.using(self.using)
        if op.type == "DELETE":
            instance = manager.filter(pk=key).first()
            if instance is None:  # deleting what is already gone is done
                return {"id": raw_id}, False
            before = read_row(served, key, self.using)
            assert before is not None
            instance.delete(using=self.using)
            return before, True
        values: dict[str, Any] = {}
        for name, value in (op.input or {}).items():
            if name == "id":  # the row id is the operation's, never rewritten
                continue
            found = served.fields.get(name)
            if found is None:
                raise SourceError(
                    "source_unknown_field",
                    f"model {served.name!r} has no field {name!r} (input)",
                    model=served.name,
                    field=name,
                )
            values[found.attname] = _to_value(found, name, value)
        if op.type == "CREATE":
            instance = model(**{served.id.attname: key})
        else:
            instance = manager.select_for_update().filter(pk=key).first()
            if instance is None:
                raise SourceError(
                    "source_row_not_found",
                    f"{op.model} {raw_id!r} does not exist",
                    status=404,
                    model=op.model,
                )
            if op.type in ("ARCHIVE", "UNARCHIVE"):
                archived = served.fields.get("archivedAt")
                if archived is None:
                    raise SourceError(
                        "source_archive_not_supported",
                        f"model {op.model!r} has no archivedAt field to {op.type.lower()}",
                        model=op.model,
                    )
                values[archived.attname] = dt.datetime.now(dt.UTC) if op.type == "ARCHIVE" else None
        for attname, value in values.items():
            setattr(instance, attname, value)
        _validate(served, instance, op.type == "CREATE")
        # save() overrides and pre_save handlers may refuse with a
        # ValidationError too: the same 400 or 409 as full_clean()'s.
        with _validation_answered(served, instance):
            if op.type == "CREATE":
                instance.save(using=self.using, force_insert=True)
            else:
                instance.save(using=self.using)
        row = read_row(served, key, self.using)
        assert row is not None
        return row, True


# ------------------------------------------------------------ helpers


def _capture_context(
    connection: Any, operations: Sequence[Operation], models: Sequence[DjangoModel]
) -> CommitContext | None:
    """The rows ``operations`` write to captured tables, each id as the
    request gives it and as the database casts the column's value to text.

    PostgreSQL's triggers read the context at COMMIT, so it names the rows of
    every operation, captured or not, without a catalog read: a capture
    installed after such a read and before the commit's first write would
    record the commit's rows a second time. SQLite's triggers run at the
    write, and the context must exist only where they do; the catalog read
    cannot go stale there, as the commit holds the write lock since its
    first statement (the ledger's)."""
    tables = {served.model._meta.db_table for served in models}
    captured = tables if connection.vendor == "postgresql" else captured_tables(connection, models)
    rows: set[tuple[str, str]] = set()
    for op, served in zip(operations, models, strict=True):
        raw_id = op.id if op.id is not None else (op.input or {}).get("id")
        if served.model._meta.db_table not in captured or not isinstance(raw_id, str):
            continue
        rows.add((served.name, raw_id))
        with contextlib.suppress(SourceError):  # a bad id: _apply refuses it
            key = _to_value(served.id, "id", raw_id)
            rows.update(
                (served.name, text) for text in entity_texts(connection, served, raw_id, key)
            )
    return CommitContext(frozenset(rows)) if rows else None


def _prune_outbox(connection_of: Callable[[], Any], read_past: int, cutoff: dt.datetime) -> int:
    # The lowest cursors first, at most one batch, never past what the engine
    # has read (the derived table is how MySQL takes a LIMIT in a DELETE's subquery).
    connection = connection_of()
    quote = connection.ops.quote_name
    cursor_column, outbox = quote("cursor"), quote("ablo_outbox")
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {outbox} WHERE {cursor_column} <= (SELECT MAX(lowest.c) FROM "
            f"(SELECT {cursor_column} AS c FROM {outbox} WHERE {cursor_column} <= %s "
            f"ORDER BY {cursor_column} LIMIT {_PRUNE_BATCH}) lowest) AND created_at < %s",
            [read_past, *_timestamps(connection, cutoff)],
        )
        return int(cursor.rowcount)


def _prune_ledger(connection_of: Callable[[], Any], now: dt.datetime) -> int:
    connection = connection_of()
    ledger = connection.ops.quote_name("ablo_idempotency")
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {ledger} WHERE client_tx_id IN (SELECT expired.k FROM (SELECT "
            f"client_tx_id AS k FROM {ledger} WHERE expires_at < %s LIMIT {_PRUNE_BATCH}) "
            "expired)",
            _timestamps(connection, now),
        )
        return int(cursor.rowcount)


def _outbox_row(values: Sequence[Any]) -> dict[str, Any]:
    row = dict(zip(OUTBOX_COLUMNS, values, strict=True))
    row["data"] = json_value(row["data"])
    return row


def _to_value(served: ServedField, name: str, value: Any) -> Any:
    """A JSON value as the Python value of ``served``'s field (or, for a
    foreign key, of the field it points at); a value that does not convert is
    the caller's 400."""
    from django.core.exceptions import ValidationError

    if value is None:
        return None
    if isinstance(value, str):
        checked_text(name, value)
    field = served.field
    target = field.target_field if getattr(field, "is_relation", False) else field
    if isinstance(value, dict | list) and target.get_internal_type() != "JSONField":
        raise ValueRejected(name, target.get_internal_type(), value)
    if target.get_internal_type() == "JSONField":
        return value
    if isinstance(value, int) and not -(1 << 63) <= value < 1 << 63:
        # Past any integer column (a driver would fail with its own error).
        raise ValueRejected(name, "an integer within 64-bit range", value)
    try:
        return target.to_python(value)
    except (ValidationError, TypeError, ValueError):
        raise ValueRejected(name, f"a value of a {target.get_internal_type()}", value) from None


def _wire_names(served: DjangoModel) -> dict[str, str]:
    names = {f.field.name: wire for wire, f in served.fields.items()}
    names.update({f.attname: wire for wire, f in served.fields.items()})
    return names


def _validate(served: DjangoModel, instance: Any, creating: bool) -> None:
    """``full_clean()``: a unique or foreign-key violation is a 409, any other
    invalid value a 400, each naming the field."""
    with _validation_answered(served, instance):
        instance.full_clean()


@contextlib.contextmanager
def _validation_answered(served: DjangoModel, instance: Any) -> Iterator[None]:
    """A ``ValidationError`` raised inside as the answer it means: a unique or
    foreign-key violation 409, any other invalid value 400, each naming the field."""
    from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

    try:
        yield
    except ValidationError as error:
        names = _wire_names(served)
        problems = error.error_dict if hasattr(error, "error_dict") else {NON_FIELD_ERRORS: [error]}
        for name, errors in problems.items():
            wire = names.get(name, name)
            for item in errors:
                codes = {getattr(e, "code", None) for e in getattr(item, "error_list", [item])}
                message = " ".join(str(m) for m in item.messages)
                field = instance._meta.get_field(name) if name in names else None
                if codes & {"unique", "unique_together"} or (
                    field is not None and field.is_relation and "invalid" in codes
                ):
                    raise SourceError(
                        "source_constraint_violation",
                        f"field {wire!r}: {message}",
                        status=409,
                        field=wire,
                    ) from None
        name, errors = next(iter(problems.items()))
        wire = names.get(name, name)
        message = " ".join(m for item in errors for m in item.messages)
        raise SourceError(
            "source_value_invalid",
            f"field {wire!r}: {message}" if name != NON_FIELD_ERRORS else message,
            field=wire,
        ) from None


def _plan(
    served: DjangoModel, query: ListQuery, page_size: int, max_page_size: int
) -> tuple[Any, int, list[Any], str | None, bool]:
    """The QuerySet of one page, its limit and ordering, by the shared listing rules."""
    from django.db.models import F

    listing.check_size(query)
    shape = listing.page_shape(query, page_size, max_page_size)
    order = _field(served, shape.order_field, "orderBy") if shape.order_field else None
    values: dict[str, Any] = {}
    clauses = []
    for index, condition in enumerate(query.where):
        found = _field(served, condition.field, "where")
        name = f"v{index}"
        shape_of = listing.condition_shape(
            condition,
            name,
            values,
            functools.partial(_to_value, found, condition.field),
            functools.partial(checked_text, condition.field),
        )
        clauses.append(
            listing.render_condition(shape_of, found.attname, values.get(name), _Q_RENDERER)
        )
    start = listing.page_start(
        query,
        shape,
        values,
        lambda last_id: _to_value(served.id, "id", last_id),
        None if order is None else lambda value: _to_value(order, shape.order_field or "", value),
    )
    queryset = served.model._base_manager.all()
    for clause in clauses:
        queryset = queryset.filter(clause)
    if start != listing.FIRST:
        queryset = queryset.filter(
            listing.render_after(
                start,
                shape.descending,
                None if order is None else order.attname,
                served.id.attname,
                values.get(listing.AFTER_ORDER_VALUE),
                values.get(listing.AFTER_ID_VALUE),
                _AFTER_RENDERER,
            )
        )
    ordering: list[Any] = []
    if order is not None:
        expression = F(order.attname)
        ordering.append(
            expression.desc(nulls_last=True)
            if shape.descending
            else expression.asc(nulls_last=True)
        )
    ordering.append(f"-{served.id.attname}" if shape.descending else served.id.attname)
    return queryset, shape.limit, ordering, shape.order_field, shape.descending


def _field(served: DjangoModel, name: str, role: str) -> ServedField:
    found = served.fields.get(name)
    if found is None:
        raise SourceError(
            "source_unknown_field",
            f"model {served.name!r} has no field {name!r} ({role})",
            model=served.name,
            field=name,
        )
    return found


class _QRenderer:
    """The shared listing rules as Django ``Q`` objects; a value is the value itself."""

    def is_null(self, column: str) -> Any:
        from django.db.models import Q

        return Q(**{f"{column}__isnull": True})

    def is_not_null(self, column: str) -> Any:
        from django.db.models import Q

        return Q(**{f"{column}__isnull": False})

    def is_(self, column: str, constant: bool) -> Any:
        from django.db.models import Q

        return Q(**{column: constant})

    def is_not(self, column: str, constant: bool) -> Any:
        from django.db.models import Q

        return ~Q(**{column: constant}) | Q(**{f"{column}__isnull": True})

    def equal(self, column: str, value: Any) -> Any:
        from django.db.models import Q

        return Q(**{column: value})

    def distinct_from(self, column: str, value: Any) -> Any:
        from django.db.models import Q

        return ~Q(**{column: value}) | Q(**{f"{column}__isnull": True})

    def in_(self, column: str, value: Any) -> Any:
        from django.db.models import Q

        return Q(**{f"{column}__in": value})

    def not_in(self, column: str, value: Any) -> Any:
        from django.db.models import Q

        return ~Q(**{f"{column}__in": value})

    def compare(self, column: str, op: str, value: Any) -> Any:
        from django.db.models import Q

        lookup = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}[op]
        return Q(**{f"{column}__{lookup}": value})

    def pattern(self, column: str, op: str, value: Any) -> Any:
        from django.db.models import Q

        negated = op.startswith("NOT ")
        lookup = "iregex" if op.endswith("ILIKE") else "regex"
        clause = Q(**{f"{column}__{lookup}": _like_to_regex(value)})
        return ~clause & Q(**{f"{column}__isnull": False}) if negated else clause

    def and_(self, *clauses: Any) -> Any:
        result = clauses[0]
        for clause in clauses[1:]:
            result = result & clause
        return result

    def or_(self, *clauses: Any) -> Any:
        result = clauses[0]
        for clause in clauses[1:]:
            result = result | clause
        return result


class _AfterRenderer(_QRenderer):
    def beyond(self, column: str, value: Any, descending: bool) -> Any:
        from django.db.models import Q

        return Q(**{f"{column}__{'lt' if descending else 'gt'}": value})


_Q_RENDERER: Final = _QRenderer()
_AFTER_RENDERER: Final = _AfterRenderer()


def _like_to_regex(pattern: str) -> str:
    """A LIKE pattern (``%`` any run, ``_`` one character, a backslash escapes)
    as an anchored regular expression: Django's ``like`` lookups escape ``%``."""
    import re

    out = ["^"]
    escaped = False
    for char in pattern:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            out.append("(?:.|\\n)*")
        elif char == "_":
            out.append("(?:.|\\n)")
        else:
            out.append(re.escape(char))
    if escaped:
        out.append(re.escape("\\"))
    # The end of the text, on every backend: "$" also matches before a final
    # newline in Python's re (SQLite), ICU (MySQL) and PCRE (MariaDB).
    out.append("(?!.|\\n)")
    return "".join(out)


def _json_param(connection: Any) -> str:
    return "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"


def _reserve(connection: Any, key: str, intent: str | None, now: dt.datetime) -> bool:
    """Insert the commit's ledger row unless its key is there; whether it was
    inserted. A concurrent commit of the same key waits for this one to end
    (the key's row lock, or SQLite's write lock), then finds the row."""
    from django.db import IntegrityError, transaction

    quote = connection.ops.quote_name
    expires = now + LEDGER_RETENTION
    params = [key, "[]", intent, *_timestamps(connection, expires, now)]
    columns = "client_tx_id, response, request_hash, expires_at, created_at"
    values = f"%s, {_json_param(connection)}, %s, %s, %s"
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            try:
                with transaction.atomic(using=connection.alias):
                    cursor.execute(
                        f"INSERT INTO {quote('ablo_idempotency')} ({columns}) VALUES ({values})",
                        params,
                    )
            except IntegrityError:
                return False
            return True
        cursor.execute(
            f"INSERT INTO {quote('ablo_idempotency')} ({columns}) VALUES ({values}) "
            "ON CONFLICT (client_tx_id) DO NOTHING RETURNING client_tx_id",
            params,
        )
        return cursor.fetchone() is not None


def _timestamps(connection: Any, *moments: dt.datetime) -> list[Any]:
    """Timestamps as the SQL adapter writes them: SQLite text in SQLAlchemy's
    format (UTC, no offset, so that its comparisons hold), MySQL UTC wall time."""
    if connection.vendor == "sqlite":
        return [m.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f") for m in moments]
    if connection.vendor == "mysql":
        return [m.astimezone(dt.UTC).replace(tzinfo=None) for m in moments]
    return list(moments)


def _replay(connection: Any, key: str, intents: Sequence[str]) -> Sequence[Any]:
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT request_hash, response, expires_at FROM {quote('ablo_idempotency')} "
            "WHERE client_tx_id = %s",
            [key],
        )
        found = cursor.fetchone()
    if found is None:
        return replayed_answer(None, intents)
    request_hash, response, expires_at = found
    return replayed_answer((request_hash, json_value(response), _expired(expires_at)), intents)


def _expired(expires_at: Any) -> bool:
    if expires_at is None:
        return False
    if isinstance(expires_at, str):
        try:
            expires_at = dt.datetime.fromisoformat(expires_at)
        except ValueError:
            return False
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=dt.UTC)
    try:
        return bool(expires_at <= dt.datetime.now(dt.UTC))
    except OverflowError:
        return False


def _last_issued(connection: Any) -> str:
    """The highest outbox cursor ever issued, as the SQL adapter reads it."""
    import sqlalchemy as sa

    from ..sql.schema import last_issued_cursor

    dialect = {"postgresql": "postgresql", "mysql": "mysql", "sqlite": "sqlite"}[connection.vendor]
    statement = last_issued_cursor(dialect)
    module = {
        "postgresql": "sqlalchemy.dialects.postgresql",
        "mysql": "sqlalchemy.dialects.mysql",
        "sqlite": "sqlalchemy.dialects.sqlite",
    }[dialect]
    import importlib

    sa_dialect = importlib.import_module(module).dialect()
    compiled = statement.compile(dialect=sa_dialect, compile_kwargs={"literal_binds": True})
    assert isinstance(statement, sa.Select)
    return str(compiled)  # run without parameters: no placeholder to escape


def _constraint(error: Exception) -> str:
    """Which constraint, in words that never quote a value."""
    text = str(error).lower()
    if "unique" in text or "duplicate" in text:
        return "a unique key"
    if "foreign key" in text:
        return "a foreign key"
    return "a constraint"


def _database_error(error: Exception) -> SourceError:
    from django.db import DataError, IntegrityError, OperationalError

    if isinstance(error, DataError):  # a value past its column's range, say
        return SourceError("source_value_invalid", "a value does not fit its column's type")
    if isinstance(error, IntegrityError):
        return SourceError(
            "source_constraint_violation",
            f"the write conflicts with a constraint of the database ({_constraint(error)})",
            status=409,
        )
    if isinstance(error, OperationalError):
        log.warning("database error: %s", type(error).__name__)
        return SourceError(
            "source_database_unavailable", "the database could not serve this request", status=503
        )
    log.warning("database error: %s", type(error).__name__)
    return SourceError("source_database_error", "the database failed this request", status=500)
