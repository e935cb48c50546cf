"""A :class:`~connector.DataSource` served straight from SQL tables.

Reads are one SELECT each. A commit is one database transaction holding the
row changes, one ledger row and one outbox event per operation, and (where
the database has it, when asked) the WAL echo; it either all happens or
none of it.

The ledger row is *reserved* before any row is touched. A concurrent commit
with the same ``correlationId`` waits on that row (the ledger's unique key,
or SQLite's write lock), then finds it and replays the stored answer: one
database arbiter, one effect.

This module is the flow of each operation, the same on every database. What
differs between databases (URLs and drivers, the reservation, the lock that
keeps outbox cursors in commit order, the echo, the driver's errors, value
widths, how an operation runs) is asked of the source's dialect
(:mod:`.dialects`), chosen once when the source is built.

The methods are ``async def``: on an asyncio driver a request never leaves
the event loop; on a blocking one each operation runs in one of the source's
own worker threads (:mod:`.execution`). Connections are not pinged when
checked out; a request that finds its pooled connection dead retries once on
a fresh one (a commit may, because the ledger makes it idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from ...errors import ConfigError, SourceError
from ...serve.datasource import DataSource, MaybeAwaitable, RequestContext
from ...serve.models import ModelNames
from ...wire.bodies import CommitRequest, CommitResult, EventsPage, ListPage, ListQuery, Operation
from ..kit.outbox import (
    LEDGER_RETENTION,
    OUTBOX_COLUMNS,
    change_event,
    event_answer,
    operation_event,
    outbox_cursor,
    replayed_answer,
)
from .answers import answers, describe_database_error, refused_as
from .capture import (
    CommitContext,
    capture_drift,
    captured_data,
    captured_models,
    is_captured,
    untagged,
)
from .commits import OwnCommits
from .declared import is_declared
from .dialects import Dialect, dialect_named, dialect_of_url
from .dialects.postgresql import OUTBOX_LOCK  # re-exported: scripts that take it import it here
from .drift import SCHEMA_CHANGED, SchemaChanged, Unservable, describe_changes
from .engines import configuration_problem, create_database_engine, database_url, shown_url
from .execution import Database, Serving, ThreadDatabase, load_row, select_one
from .execution import LoopDatabase as _LoopDatabase  # noqa: F401  (the tests patch it here)
from .models import ModelMap, ServedModel, snake_to_camel
from .plans import FullTableShape, ShapePlans
from .query import MAX_BOUND_VALUES, column_for, plan_list
from .reflection import reflect_models, served_tables
from .schema import ledger, outbox, verify_tables
from .values import python_type, to_column_value, to_json_row, to_json_value

# The URL and engine helpers were defined here before the dialects had
# modules of their own: they stay importable from here.
__all__ = [
    "DEFAULT_POOL_SIZE",
    "OUTBOX_LOCK",
    "shown_url",
    "SQLSource",
    "configuration_problem",
    "create_database_engine",
    "database_url",
    "describe_database_error",
    "served_tables",
]

log = logging.getLogger("connector.sql")

T = TypeVar("T")

#: How long outbox events are kept once the engine has paged past them.
DEFAULT_OUTBOX_RETENTION: Final = 7 * 24 * 3600.0
# Pruning: rows per DELETE (each its own short transaction, so no lock is
# held for long: see bench/retention.py), at most every so often, for at most
# so long per probe.
_PRUNE_BATCH: Final = 1000
_PRUNE_EVERY_SECONDS: Final = 10.0
_PRUNE_BUDGET_SECONDS: Final = 1.0
# Where the triggers stage their rows (MySQL, MariaDB: see the dialect), the
# staged rows moved into the outbox before an events page (one batch: a page
# never waits on moving a million rows) and at a probe (batches, so long).
_MOVE_BATCH: Final = 1000
_MOVE_BUDGET_SECONDS: Final = 1.0
# Database connections held open. On PostgreSQL more connections than this
# bought no throughput at 64 requests in flight on a 2-core host (see
# bench/sql.py); requests beyond it wait for a connection on the event loop.
# MySQL and MariaDB keep their dialect's (Dialect.default_pool_size).
DEFAULT_POOL_SIZE: Final = 10
# A connection is replaced after this long, so a server-side idle timeout or
# a failover never meets a request first (which would then retry once).
POOL_RECYCLE_SECONDS: Final = 1800
POOL_TIMEOUT_SECONDS: Final = 10.0  # waiting for a free pooled connection
# List page shapes kept compiled (where fields and operators, order, cursor):
# at most this many, holding at most this many bytes (SQL text and keys; no
# request's values), whichever comes first.
_MAX_PAGE_SHAPES: Final = 256
_MAX_PAGE_SHAPE_BYTES: Final = 4 * 1024 * 1024


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SQLSource(DataSource):
    """Serve tables of a SQL database as Ablo models.

    ``SQLSource("postgresql://app@db/app", models=ModelMap.from_toml("models.toml"))``
    serves the mapped tables; ``models=Base`` (a declarative base, or a module
    of SQLAlchemy classes) serves the application's classes (see .declared);
    without ``models`` every table is served under its own name. Subclass it to override one operation and let the adapter
    serve the rest (``return await super().list(model, query, ctx)``).

    Reflection happens in :meth:`prepare` (the CLI calls it at startup to
    fail fast) or, at the latest, on the first request.

    Health: :attr:`healthy` is ``False`` (and :attr:`last_error` says why)
    from the moment the database could not be reached until a request or
    :meth:`probe` succeeds again.

    ``pool_size`` bounds the connections: on PostgreSQL, MySQL and MariaDB
    up to ``pool_size`` for reads (see :mod:`.connections`) and as many
    for commits (on PostgreSQL on connections of their own, elsewhere
    through SQLAlchemy's pool, which probes use too). Without it, 10; on
    MySQL and MariaDB, 20 (a read waits longer on their server).

    ``url`` may also be an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`
    (served on the event loop, every read through its pool) or an
    :class:`~sqlalchemy.Engine` (served in worker threads).
    """

    def __init__(
        self,
        url: str | sa.URL | sa.Engine | AsyncEngine,
        models: ModelMap | Mapping[str, Any] | object = None,
        *,
        page_size: int = 100,
        max_page_size: int = 1000,
        pool_size: int | None = None,
        statement_timeout: float | None = 30.0,
        outbox_retention: float | None = DEFAULT_OUTBOX_RETENTION,
    ) -> None:
        if outbox_retention is not None and outbox_retention < 0:
            raise ConfigError("the outbox retention must be at least 0 seconds")
        if page_size < 1 or max_page_size < page_size:
            raise ConfigError("page_size must be at least 1 and at most max_page_size")
        if pool_size is not None and pool_size < 1:
            raise ConfigError("the database pool size must be at least 1")
        # The dialect is chosen here, once: everything below asks it.
        self._dialect: Dialect
        self._database: Database
        if isinstance(url, AsyncEngine | sa.Engine):
            self._dialect = dialect_named(url.dialect.name)
        else:
            self._dialect, parsed = dialect_of_url(url)
        serving = Serving(
            pool_size=self._dialect.default_pool_size if pool_size is None else pool_size,
            statement_timeout=statement_timeout,
            pool_timeout=POOL_TIMEOUT_SECONDS,
            pool_recycle=POOL_RECYCLE_SECONDS,
            max_page_shapes=_MAX_PAGE_SHAPES,
            max_page_shape_bytes=_MAX_PAGE_SHAPE_BYTES,
        )
        if isinstance(url, AsyncEngine):
            self._database = self._dialect.loop_database(url, serving)
        elif isinstance(url, sa.Engine):
            self._database = ThreadDatabase(
                url, serving.pool_size, self._dialect.thread_read_options, self._dialect.run_write
            )
        else:
            self._database = self._dialect.serving_database(parsed, serving)
        self.engine: sa.Engine | AsyncEngine = self._database.engine
        if models is not None and not isinstance(models, ModelMap):
            if is_declared(models):
                models = ModelMap.from_classes(models)
            elif isinstance(models, Mapping):
                models = ModelMap.from_dict(models)
            else:
                raise ConfigError(
                    f"models is a {type(models).__name__}: give a ModelMap, a dict, a "
                    "declarative base or a module of SQLAlchemy classes"
                )
        self.model_map = models
        # Without a map, the names are known once the tables are reflected.
        self._model_names: ModelNames | None = None if models is None else models.names
        self.page_size = page_size
        self.max_page_size = max_page_size
        self._models: dict[str, ServedModel] | None = None
        self._prepare_lock: asyncio.Lock | None = None
        self._max_bound_values = MAX_BOUND_VALUES
        self._healthy = True
        self._last_error: str | None = None
        # After a served table changed (see .drift): the models that cannot be
        # served as mapped, and why; a problem with the ledger or outbox; and a
        # count of reflections, so that concurrent requests reflect once.
        self._unservable: dict[str, str] = {}
        self._schema_problem: str | None = None
        self._reflections = 0
        self._schema_lock: asyncio.Lock | None = None
        # Each list shape's plan, read once in the background (see .plans).
        self._plans = ShapePlans(self._dialect.name, self._database.read)
        # Capture (see .capture): the models whose writes the database records
        # itself, what no longer matches, and how their captured rows convert.
        self._captured: frozenset[str] = frozenset()
        self._capture_drift: dict[str, str] = {}
        self._capture_readers: dict[str, tuple[ServedModel, Any]] = {}
        self._move_problem: str | None = None
        # Retention (see _prune): the highest cursor the engine has paged
        # past (it asked for events after it), unknown (0) until it asks.
        self.outbox_retention = outbox_retention
        self._read_past = 0
        self._pruned_at = -_PRUNE_EVERY_SECONDS
        self._gauges: dict[str, float] = {}
        self._outbox_problem: str | None = None  # said once, until it is solved

    def __repr__(self) -> str:
        url = shown_url(self.engine.url)
        return f"{type(self).__name__}({url!r})"

    # ------------------------------------------------------------ health

    @property
    def healthy(self) -> bool:
        """``False`` while the database is known to be unreachable."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        """Why the database was last found unreachable (no password, no SQL), or ``None``."""
        return self._last_error

    async def probe(self) -> None:
        """Ask the database for ``SELECT 1`` (reflecting the models first if
        that has not happened yet), and update :attr:`healthy`.

        The daemon calls it every few seconds (see ``DataSource.probe``):
        it returns when the database can serve and raises
        ``SourceError("database_unreachable")`` (or
        ``"source_adapter_misconfigured"``) with the reason, never the URL's
        password or SQL, when it cannot. While a served table has changed so
        that a model cannot be served as mapped (its table, or a mapped column,
        is gone), it reflects again and raises ``"source_schema_changed"``
        naming each such model, until they can be served again.
        """
        try:
            if self._models is None:
                await self._prepare_on_loop()
            else:
                await self._database.read(select_one)
                if self._schema_problems() is not None:  # is it back? (the table, the column)
                    await self._reflect_after_change(self._reflections, renew=False)
        except ConfigError as error:
            self._unhealthy(str(error))
            raise SourceError("source_adapter_misconfigured", str(error), status=503) from None
        except sa_exc.SQLAlchemyError as error:
            self._unhealthy(describe_database_error(error))
            raise SourceError(
                "database_unreachable", describe_database_error(error), status=503
            ) from None
        except SourceError as error:  # reflecting again met the database down
            self._unhealthy(error.message)
            raise SourceError("database_unreachable", error.message, status=503) from None
        self._healthy, self._last_error = True, None
        problems = self._schema_problems()
        if problems is not None:
            # The database answers; some of what it serves does not (/readyz names it).
            raise SchemaChanged(problems)
        await self._keep_outbox()
        await self._recheck_capture()
        if self._capture_drift:
            raise SourceError(
                "source_capture_stale", "; ".join(self._capture_drift.values()), status=503
            )

    def probe_gauges(self) -> Mapping[str, float]:
        """The outbox as the last probe measured it (see ``metrics.SOURCE_GAUGES``)."""
        return self._gauges

    async def _keep_outbox(self) -> None:
        """Move what the capture triggers staged, prune what retention allows,
        then measure the outbox (at each probe)."""
        if self._schema_problem is not None:
            return
        failed: Exception | None = None
        if self._stages_capture():
            await self._move_staged()
        pruned = False
        now = time.monotonic()
        if self.outbox_retention is not None and now - self._pruned_at >= _PRUNE_EVERY_SECONDS:
            self._pruned_at = now
            try:
                await self.prune(_PRUNE_BUDGET_SECONDS)
                pruned = True
            except (SourceError, sa_exc.SQLAlchemyError) as error:
                failed = error
        try:
            self._gauges = await self._read(self._measure_outbox, self._read_past)
        except (SourceError, sa_exc.SQLAlchemyError) as error:
            failed = failed or error
        if failed is not None:
            self._outbox_trouble(failed)
        elif self._outbox_problem is not None and (pruned or self.outbox_retention is None):
            log.info("pruning and measuring the outbox work again")
            self._outbox_problem = None

    async def _move_staged(self) -> None:
        """Move what the capture triggers staged into the outbox, batch after
        batch, for at most a second; say once (not at every probe) why not."""
        deadline = time.monotonic() + _MOVE_BUDGET_SECONDS
        try:
            while time.monotonic() < deadline and await self._read(self._dialect.has_staged):
                moved = await self._write(self._dialect.move_captured, _MOVE_BATCH)
                if moved < _MOVE_BATCH:
                    break
        except (SourceError, sa_exc.SQLAlchemyError) as error:
            if isinstance(error, sa_exc.DBAPIError) and self._dialect.lacks_privilege(error.orig):
                problem = (
                    "the database user may not read or delete the rows the capture triggers "
                    "staged in ablo_capture_pending, so the application's writes do not reach "
                    "events (grant them: `ablo-connector migrate --print-grants ROLE` prints "
                    "the GRANTs)"
                )
            else:
                reason = (
                    describe_database_error(error)
                    if isinstance(error, sa_exc.SQLAlchemyError)
                    else str(error)
                )
                problem = f"could not move the staged captured writes into the outbox: {reason}"
            if problem != self._move_problem:
                log.warning("%s", problem)
                self._move_problem = problem
            return
        if self._move_problem is not None:
            log.info("the staged captured writes move into the outbox again")
            self._move_problem = None

    def _outbox_trouble(self, error: Exception) -> None:
        """Say once (not at every probe) why retention cannot do its work."""
        if isinstance(error, sa_exc.DBAPIError) and self._dialect.lacks_privilege(error.orig):
            problem = (
                "the database user may not delete from ablo_outbox and ablo_idempotency, so "
                "neither is pruned (grant DELETE on both: `ablo-connector migrate --print-grants "
                "ROLE` prints the GRANTs); serving goes on"
            )
        elif isinstance(error, sa_exc.SQLAlchemyError):
            problem = f"could not prune or measure the outbox: {describe_database_error(error)}"
        else:
            problem = f"could not prune or measure the outbox: {error}"
        if problem != self._outbox_problem:
            log.warning("%s", problem)
            self._outbox_problem = problem

    async def prune(self, budget: float = _PRUNE_BUDGET_SECONDS) -> tuple[int, int]:
        """Delete, in batches of at most 1000 rows (each its own short
        transaction), outbox events older than :attr:`outbox_retention` that
        the engine has paged past, and ledger rows past ``expires_at``, until
        none is left or ``budget`` seconds have gone; (events, ledger rows)
        deleted. An event the engine has not paged past is never deleted."""
        deadline = time.monotonic() + budget
        events = ledger_rows = 0
        for work, kind in ((_prune_outbox, "events"), (_prune_ledger, "ledger")):
            while time.monotonic() < deadline:
                if kind == "events":
                    if self.outbox_retention is None or self._read_past == 0:
                        break
                    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.outbox_retention)
                    deleted = await self._write(work, self._read_past, cutoff)
                    events += deleted
                else:
                    deleted = await self._write(work, dt.datetime.now(dt.UTC))
                    ledger_rows += deleted
                if deleted < _PRUNE_BATCH:
                    break
        if events or ledger_rows:
            log.info("pruned %d outbox event(s) and %d ledger row(s)", events, ledger_rows)
        return events, ledger_rows

    @staticmethod
    def _measure_outbox(connection: sa.Connection, read_past: int) -> dict[str, float]:
        span = connection.execute(
            sa.select(sa.func.min(outbox.c.cursor), sa.func.max(outbox.c.cursor))
        ).one()
        held = 0 if span[0] is None else span[1] - span[0] + 1
        oldest = connection.execute(
            sa.select(outbox.c.created_at)
            .where(outbox.c.cursor > read_past)
            .order_by(outbox.c.cursor)
            .limit(1)
        ).scalar()
        age = 0.0
        if oldest is not None:
            if oldest.tzinfo is None:  # SQLite, MySQL: UTC without an offset
                oldest = oldest.replace(tzinfo=dt.UTC)
            age = max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds())
        return {
            "ablo_connector_outbox_events": float(held),
            "ablo_connector_outbox_oldest_unread_age_seconds": age,
        }

    def _unhealthy(self, reason: str) -> None:
        self._healthy, self._last_error = False, reason

    # ------------------------------------------------------------ startup

    @property
    def models(self) -> Mapping[str, ServedModel]:
        """The served models (reflected by :meth:`prepare`; empty before)."""
        return self._models or {}

    def prepare(self) -> Mapping[str, ServedModel]:
        """Reflect the mapped tables and check the ledger and outbox exist.

        Call it before the event loop runs (the CLI does, at startup). Raises
        :class:`ConfigError` for a mistake in the map or the schema, and for
        a database that cannot work (refused login, no such database), and
        ``sqlalchemy.exc.OperationalError`` when the database is unreachable
        (then :attr:`healthy` is ``False`` until a request or :meth:`probe`
        succeeds). Inside a running event loop, use :meth:`probe` instead.
        """
        if self._models is None:
            self._models = self._prepare_with(
                lambda: self._database.reflect_before_loop(self._reflect)
            )
        return self._models

    def _prepare_with(
        self, reflect: Callable[[], dict[str, ServedModel]]
    ) -> dict[str, ServedModel]:
        try:
            models = reflect()
        except sa_exc.OperationalError as error:
            problem = self._dialect.configuration_problem(error, self.engine.url)
            if problem is not None:
                raise ConfigError(problem) from None
            self._unhealthy(describe_database_error(error))
            raise
        self._log_serving(models)
        return models

    async def _prepare_on_loop(self) -> dict[str, ServedModel]:
        if self._prepare_lock is None:
            self._prepare_lock = asyncio.Lock()
        async with self._prepare_lock:
            if self._models is None:
                models = await self._database.read(self._reflect)
                self._log_serving(models)
                self._models = models
        return self._models

    def _log_serving(self, models: Mapping[str, ServedModel]) -> None:
        self._healthy, self._last_error = True, None
        log.info(
            "serving %d model(s) from %s: %s",
            len(models),
            shown_url(self.engine.url),
            ", ".join(sorted(models)),
        )

    def _reflect(self, connection: sa.Connection) -> dict[str, ServedModel]:
        """Every model at startup, or a ConfigError naming the first that cannot be served."""
        self._dialect.check_server(connection)
        inspector = sa.inspect(connection)
        verify_tables(inspector)
        limit = self._dialect.bound_value_limit(connection)
        if limit is not None:
            self._max_bound_values = min(MAX_BOUND_VALUES, limit)
        specs = self.model_map or ModelMap.of_tables(inspector.get_table_names())
        if not specs:
            raise ConfigError("the database has no tables to serve (create one, or pass --models)")
        # Without a map, a table is served by name only when it has an id.
        served, problems, skipped = reflect_models(
            connection, specs, self._dialect, skip_without_id=self.model_map is None
        )
        if problems:
            raise ConfigError(next(iter(problems.values())))
        if skipped:
            log.warning(
                "not serving table(s) without a unique id column: %s (map one with --models: "
                '[models.NAME] table = "..." and [models.NAME.fields] id = "COLUMN")',
                ", ".join(f"{table} ({why})" for table, why in sorted(skipped.items())),
            )
        if not served:
            raise ConfigError(
                "the database has no table with an id column to serve (create one, or map "
                "another column as the id with --models)"
            )
        self._note_capture(connection, served)
        # The dispatcher resolves aliases (a lowercased name) to these names
        # before authorize runs, so a hook that checks the name sees this one.
        self._model_names = ModelNames(
            {name: specs[name].typename for name in served},
            origin="the tables served (pass --models to serve them under other names)",
        )
        return served

    def _note_capture(self, connection: sa.Connection, served: Mapping[str, ServedModel]) -> None:
        """Which served models the database captures, and say (once, at
        WARNING) each capture that no longer matches its table or the map."""
        if self._dialect.capture_state_create is None:
            return
        self._captured, self._capture_drift = self._capture_state(connection, served)
        for line in self._capture_drift.values():
            log.warning("%s", line)

    async def _recheck_capture(self) -> None:
        """Read the capture state again (at each probe): ``migrate --capture``
        may have installed, repaired or removed it while the connector runs.

        A commit on a captured model tells the triggers to leave its rows to
        it; one that does not know of its model's capture would be recorded
        twice, so a capture installed under a running connector is adopted
        within a probe. A capture that does not match is read again after
        the tables are reflected again: the repair may be for a column added
        since the connector started, which the models then serve too.
        """
        if self._dialect.capture_state_create is None or self._models is None:
            return
        try:
            captured, drift = await self._read(self._capture_state, self._models)
            if drift:
                await self._reflect_after_change(self._reflections, renew=False)
                captured, drift = await self._read(self._capture_state, self._models)
        except (SourceError, sa_exc.SQLAlchemyError) as error:
            log.warning("could not read the capture's state: %s", error)
            return
        for name in sorted(self._capture_drift.keys() - drift.keys()):
            log.info("the capture of model %r matches its table again", name)
        for name, line in drift.items():
            if self._capture_drift.get(name) != line:
                log.warning("%s", line)
        for name in sorted(captured - self._captured):
            log.info("model %r is captured: the database records its writes", name)
        for name in sorted(self._captured - captured):
            log.info("model %r is no longer captured", name)
        self._captured, self._capture_drift = captured, drift

    def _stages_capture(self) -> bool:
        """Whether capture triggers may have staged rows for the connector to move."""
        return self._dialect.stages_capture and bool(self._captured or self._capture_drift)

    @staticmethod
    def _capture_state(
        connection: sa.Connection, served: Mapping[str, ServedModel]
    ) -> tuple[frozenset[str], dict[str, str]]:
        captured = frozenset(captured_models(connection)) & set(served)
        return captured, capture_drift(connection, served)

    def _reflect_served(
        self, connection: sa.Connection
    ) -> tuple[dict[str, ServedModel], dict[str, str]]:
        """The models served since startup, as their tables stand now, and why
        any cannot be served any more (a table or a mapped column is gone)."""
        verify_tables(sa.inspect(connection))
        served = self._models or {}
        specs = self.model_map or ModelMap.of_tables(served)  # without a map: model = table
        reflected, problems, _ = reflect_models(
            connection,
            {name: specs[name] for name in served},
            self._dialect,
            skip_without_id=False,
        )
        return reflected, problems

    def close(self) -> None:
        """Drop the pooled connections without waiting (use :meth:`aclose` in a loop)."""
        self._database.forget()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._plans.close()
        await self._database.dispose()

    @property
    def full_table_shapes(self) -> Sequence[FullTableShape]:
        """The list shapes served so far whose plan reads or sorts every row
        of their table (each logged once, with the index that would serve it)."""
        return tuple(self._plans.full_table)

    async def shape_plan(self, model: str, query: ListQuery) -> FullTableShape | None:
        """Read now the plan of a list page of ``model`` for ``query``: the
        shape if it reads or sorts every row (``check`` asks this)."""
        served = await self._served(model)
        plan = plan_list(
            served, query, self.page_size, self.max_page_size, self._dialect, self._max_bound_values
        )
        with self._answers(served):
            return await self._plans.inspect(plan)

    def served_models(self) -> MaybeAwaitable[ModelNames]:
        """The names requests may use: the map's at once, else the tables' once reflected."""
        names = self._model_names
        return names if names is not None else self._reflected_names()

    async def _reflected_names(self) -> ModelNames:
        await self._reflected()
        assert self._model_names is not None
        return self._model_names

    async def _reflected(self) -> Mapping[str, ServedModel]:
        """The served models, reflected now if that has not happened yet."""
        models = self._models
        if models is None:  # not reflected yet (the database was down at startup)
            with self._answers(), self._database_errors():
                try:
                    models = await self._prepare_on_loop()
                except ConfigError as error:
                    log.error("cannot serve: %s", error)
                    raise SourceError(
                        "source_adapter_misconfigured", str(error), status=500
                    ) from None
        return models

    async def _model(self, name: str) -> ServedModel:
        models = self._models or await self._reflected()
        model = models.get(name)
        if model is None:  # an alias, from a caller other than the dispatcher
            names = self._model_names
            assert names is not None
            declared = names.resolve(name)
            if declared is None or declared not in models:
                raise names.unknown(name)
            model = models[declared]
        return model

    async def _served(self, name: str) -> ServedModel:
        """The model for a request, unless its table changed so that it cannot be served."""
        served = await self._model(name)
        problem = self._unservable.get(served.name)
        if problem is not None:
            raise Unservable(
                f"{problem}: the table changed while being served; retry once it is fixed",
                model=served.name,
            )
        return served

    # ------------------------------------------------------------ schema changes

    async def _on_current_schema(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; if a served table changed under it, renew what was
        prepared, reflect again, and run it once more from the start (against
        the new reflection). A second change answers 503 ``source_schema_changed``."""
        reflections = self._reflections
        try:
            return await operation()
        except Unservable:
            raise
        except SchemaChanged:
            await self._reflect_after_change(reflections, renew=True)
        return await operation()

    async def _reflect_after_change(self, reflections: int, *, renew: bool) -> None:
        """Reflect the served models again, unless someone did since ``reflections``;
        ``renew`` first replaces every connection's prepared statements."""
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self._reflections != reflections or self._models is None:
                return  # another request did it while this one waited (or none was made yet)
            if renew:
                self._database.renew()
            with self._answers(), self._database_errors():
                try:
                    models, problems = await self._database.read(self._reflect_served)
                except ConfigError as error:  # the ledger or the outbox is gone
                    if self._schema_problem != str(error):
                        log.error("cannot serve commits and events: %s", error)
                    self._schema_problem = str(error)
                    self._reflections += 1
                    return
            self._adopt(models, problems)
            self._reflections += 1

    def _adopt(self, models: Mapping[str, ServedModel], problems: Mapping[str, str]) -> None:
        """Serve a new reflection, saying once per model what changed."""
        old = self._models or {}
        if self._schema_problem is not None:
            log.info("the ledger and outbox are back: serving commits and events again")
            self._schema_problem = None
        dialect = self.engine.dialect
        adopted: dict[str, ServedModel] = {}
        for name, model in models.items():
            changes = describe_changes(old[name], model, dialect) if name in old else []
            if name in self._unservable:
                log.info("model %r can be served again (table %s)", name, model.table.fullname)
            elif changes:
                log.warning(
                    "model %r (table %s) changed: %s; serving it as it is now",
                    name, model.table.fullname, "; ".join(changes),
                )  # fmt: skip
            else:
                continue  # the same as before: keep it (and its compiled statements)
            adopted[name] = model
        if adopted:
            self._database.forget_statements()
        elif not problems and not self._unservable:
            log.info("a served table changed, but no served model did; statements prepared again")
        for name, problem in problems.items():
            if self._unservable.get(name) != problem:
                # The problem starts "model 'x' (table 'y'): ", said once here.
                detail = (
                    problem.split(": ", 1)[-1] if problem.startswith(f"model {name!r}") else problem
                )
                log.warning(
                    "cannot serve model %r any more: %s; it answers 503 %s until it can",
                    name, detail, SCHEMA_CHANGED,
                )  # fmt: skip
        # A model that cannot be served keeps its last reflection (it is not
        # used): requests for it still find it, and answer 503, not 400.
        self._models = {**old, **adopted}
        self._unservable = dict(problems)

    def _schema_problems(self) -> str | None:
        """What the probe reports while a served table cannot be served as mapped."""
        problems = list(self._unservable.values())
        if self._schema_problem is not None:
            problems.insert(0, self._schema_problem)
        return "; ".join(problems) if problems else None

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        with self._database_errors():
            try:
                result = await attempt()
            except sa_exc.DBAPIError as error:
                if not error.connection_invalidated:
                    raise
                # A pooled connection died (the server restarted, a proxy
                # dropped it): the pool is renewed; try once on a fresh one.
                # Safe for a commit too: had the first attempt committed, the
                # ledger would answer this one as a replay.
                log.info("a pooled database connection was closed; retrying on a new one")
                result = await attempt()
        self._healthy = True
        return result

    async def _read(self, work: Callable[..., T], *args: Any) -> T:
        return await self._retrying(lambda: self._database.read(work, *args))

    async def _write(self, work: Callable[..., T], *args: Any) -> T:
        return await self._retrying(lambda: self._database.write(work, *args))

    async def _fetch(self, statement: sa.Select[Any], params: Mapping[str, Any]) -> list[Any]:
        return await self._retrying(lambda: self._database.fetch(statement, params))

    def _answers(self, *models: ServedModel) -> AbstractContextManager[None]:
        """Database failures as answers, by this source's dialect (see .answers)."""
        return answers(self._dialect, *models)

    @contextmanager
    def _database_errors(self) -> Iterator[None]:
        try:
            yield
        except sa_exc.OperationalError as error:
            if refused_as(self._dialect, error) == "source_database_unavailable":
                self._unhealthy(describe_database_error(error))
            raise
        except (sa_exc.InterfaceError, sa_exc.TimeoutError) as error:
            self._unhealthy(describe_database_error(error))
            raise

    # ------------------------------------------------------------ reads

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        return await self._on_current_schema(lambda: self._load(model, id))

    async def _load(self, model: str, id: str) -> dict[str, Any] | None:
        served = await self._served(model)
        key = to_column_value(served.id, "id", id)
        with self._answers(served):
            rows = await self._fetch(served.load_statement, {"ablo_id": key})
        return served.rows_to_json(rows[:1])[0] if rows else None

    async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:
        return await self._on_current_schema(lambda: self._list(model, query))

    async def _list(self, model: str, query: ListQuery) -> ListPage:
        served = await self._served(model)
        plan = plan_list(
            served, query, self.page_size, self.max_page_size, self._dialect, self._max_bound_values
        )
        if plan.limit == 0:
            return ListPage(rows=[])
        with self._answers(served):
            found = await self._retrying(lambda: self._database.fetch_page(plan))
        self._plans.served(plan)
        page = found[: plan.limit]
        more = len(found) > plan.limit
        return ListPage(
            # One conversion for the whole page: JSON-ready values, NaN as null.
            rows=served.rows_to_json(page),
            next_cursor=plan.next_cursor(served, page[-1]) if more else None,
        )

    async def events(
        self, cursor: str | None, limit: int | None, ctx: RequestContext
    ) -> EventsPage:
        after = outbox_cursor(cursor)
        count = min(self.page_size if limit is None else limit, self.max_page_size)
        page = await self._on_current_schema(lambda: self._events(cursor, after, count))
        # Asking for what follows ``after`` says the engine has read up to it
        # (once the cursor is known to be one the outbox issued).
        self._read_past = max(self._read_past, after)
        return page

    async def _events(self, cursor: str | None, after: int, count: int) -> EventsPage:
        if self._schema_problem is not None:
            raise Unservable(self._schema_problem)
        rows: list[Any] = []
        with self._answers():
            if self._stages_capture() and await self._read(self._dialect.has_staged):
                # What the triggers staged and is committed becomes events now.
                await self._write(self._dialect.move_captured, _MOVE_BATCH)
            if count > 0:
                rows = await self._fetch(_EVENTS, {"after": after, "count": count})
            if not rows and after > 0:
                await self._check_issued(after)
        found = [dict(zip(OUTBOX_COLUMNS, row, strict=True)) for row in rows]
        if any(is_captured(row["data"]) for row in found):
            await self._convert_captured(found, after)
        events = [event_answer(row) for row in found]
        # The last delivered cursor, or the one given: the engine always has
        # a position to resume from and never sees an event twice.
        return EventsPage(events=events, next_cursor=events[-1]["cursor"] if events else cursor)

    async def _convert_captured(self, rows: Sequence[dict[str, Any]], after: int) -> None:
        """Each captured row (see .capture) as ``load`` would have answered
        it right after its write: the same fields and conversions."""
        models = self._models or {}
        last = rows[-1]["cursor"]
        pending = [row for row in rows if is_captured(row["data"])]
        for name in dict.fromkeys(row["model"] for row in pending):
            served = models.get(name)
            mine = [row for row in pending if row["model"] == name]
            if served is None:  # no longer served: its columns under field names
                for row in mine:
                    raw = row["data"][0]
                    row["data"] = to_json_value(
                        {snake_to_camel(k): untagged(v) for k, v in raw.items()}
                    )
                continue
            reader = self._capture_readers.get(name)
            if reader is None or reader[0] is not served:
                statement = self._dialect.captured_rows_statement(served)
                conversion = (
                    statement
                    if statement is not None
                    else self._dialect.captured_value_processors(
                        served, self._database.engine.dialect
                    )
                )
                reader = self._capture_readers[name] = (served, conversion)
            conversion = reader[1]
            if isinstance(conversion, dict):
                for row in mine:
                    row["data"] = captured_data(served, row["data"][0], conversion)
                continue
            typed = await self._fetch(conversion, {"after": after, "last": last, "model": name})
            by_cursor = {values[0]: values[1:] for values in typed}
            for row in mine:
                recorded = {served.fields[c] for c in row["data"][0] if c in served.fields}
                fields = served.values_to_fields(by_cursor[row["cursor"]])
                row["data"] = to_json_row({k: v for k, v in fields.items() if k in recorded})

    async def _check_issued(self, after: int) -> None:
        """Refuse a cursor past every cursor the outbox issued: the engine would
        wait there for events that, in a rewound outbox, come under lower cursors.
        Asked only when no event follows ``after`` (a page of events proves it)."""
        (last,) = (await self._fetch(self._dialect.last_issued_cursor, {}))[0]
        if after > (last or 0):
            raise SourceError(
                "source_cursor_invalid",
                "the events cursor is past the last event this source issued (was the "
                "outbox recreated, truncated or restored from an older backup?)",
            )

    # ------------------------------------------------------------ commit

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        if commit.echo is not None and not self._dialect.can_echo:
            raise SourceError(
                "source_commit_echo_not_supported",
                f"a {self._dialect.name} database cannot emit a PostgreSQL WAL echo",
                status=409,
            )
        if commit.echo is not None and commit.intent_hash is None:
            raise SourceError(
                "idempotency_conflict",
                "a commit with a WAL echo must carry the engine's intentHash",
                status=409,
            )
        if not commit.correlation_id:  # the dispatcher refuses these first; direct callers too
            raise SourceError(
                "source_commit_requires_correlation_id", "a commit needs a correlationId"
            )
        return await self._on_current_schema(lambda: self._commit(commit))

    async def _commit(self, commit: CommitRequest) -> CommitResult:
        # Resolve every model before the transaction: a bad name costs no lock.
        models = [await self._served(op.model) for op in commit.operations]
        if self._schema_problem is not None:
            raise Unservable(self._schema_problem)
        with self._answers(*models):
            commits = await self._database.commits()
            if commits is not None and all(
                _direct(served) and (commits.captures or served.name not in self._captured)
                for served in models
            ):
                rows = await self._retrying(lambda: self._commit_directly(commits, commit, models))
            else:
                rows = await self._write(self._commit_in, commit, models)
        return CommitResult(rows=rows)

    async def _commit_directly(
        self, commits: OwnCommits[Any], commit: CommitRequest, models: Sequence[ServedModel]
    ) -> Sequence[Any]:
        """:meth:`_commit_in`, step for step, on the dialect's own connections
        (see .commits); a shape it cannot run goes through SQLAlchemy, whole."""
        # An operation the adapter refuses is refused after the ledger had
        # its say, as on SQLAlchemy's path: a replay is answered from it.
        refused: SourceError | None = None
        try:
            steps = self._operations(commit, models)
        except SourceError as error:
            steps, refused = [], error
        shapes = [
            commits.row_statement(served, kind, tuple(sorted(values)))
            for served, (kind, _, values, _) in zip(models, steps, strict=refused is None)
        ]
        if any(shape is None for shape in shapes):
            return await self._database.write(self._commit_in, commit, models)
        key, reservation = _reservation(commit)
        async with commits.transaction() as transaction:
            if not await transaction.reserve(reservation):
                found = await transaction.replayed(key, dt.datetime.now(dt.UTC))
                return _replayed(found, commit.replayable_intent_hashes)
            if refused is not None:
                raise refused
            context = self._capture_context(commit.operations, models)
            if context is not None:
                await transaction.captured(context.as_json())
            applied = []
            followed = _Followed(commit, context)
            for index, (op, served, shape, (kind, id_value, values, raw_id)) in enumerate(
                zip(commit.operations, models, shapes, steps, strict=True)
            ):
                row = await transaction.row(shape, {**values, "ablo_id": id_value})
                found = None if row is None else to_json_row(served.values_to_fields(row))
                applied.append(_outcome(op, kind, found, raw_id))
                for other, other_key in followed.to_read_after(index, served, kind, id_value):
                    select = commits.row_statement(other, "select", ())
                    if select is None:
                        continue
                    now = await transaction.row(select, {"ablo_id": other_key})
                    followed.read(
                        index, other, other_key,
                        None if now is None else to_json_row(other.values_to_fields(now)),
                    )  # fmt: skip
                followed.wrote(served, id_value, kind, applied[-1][0])
            rows = [row for row, _ in applied]
            events = _events(commit, applied, followed.events)
            await transaction.finish(
                events, key, rows, None if commit.echo is None else commit.echo.payload
            )
        return rows

    def _commit_in(
        self, connection: sa.Connection, commit: CommitRequest, models: Sequence[ServedModel]
    ) -> Sequence[Any]:
        key, reservation = _reservation(commit)
        if not self._dialect.reserve(connection, reservation):
            return self._replay(connection, key, commit.replayable_intent_hashes)
        # Every operation is checked before the first is written: a request's
        # mistake is answered the same whatever the database would say first.
        steps = self._operations(commit, models)
        # On a captured table the triggers leave the rows this commit writes
        # to it (see .capture): its events are written below, as everywhere.
        context = self._capture_context(commit.operations, models)
        if context is not None:
            self._dialect.begin_captured_commit(connection, context)
        applied = []
        followed = _Followed(commit, context)
        for index, (op, served, step) in enumerate(
            zip(commit.operations, models, steps, strict=True)
        ):
            applied.append(self._apply(connection, served, op, step))
            kind, id_value = step[0], step[1]
            for other, other_key in followed.to_read_after(index, served, kind, id_value):
                followed.read(index, other, other_key, self._select(connection, other, other_key))
            followed.wrote(served, id_value, kind, applied[-1][0])
        if context is not None:
            self._dialect.end_captured_commit(connection, context)
        rows = [row for row, _ in applied]
        events = _events(commit, applied, followed.events)
        if events:
            # Cursors are drawn when a row is inserted, not when the
            # transaction commits: without the dialect's lock a reader could
            # see cursor 8 committed while 7 is still in flight, move past
            # it, and never see 7.
            self._dialect.lock_commit_order(connection)
            connection.execute(outbox.insert(), events)
        connection.execute(
            ledger.update().where(ledger.c.client_tx_id == key).values(response=rows)
        )
        if commit.echo is not None:
            self._dialect.emit_echo(connection, commit.echo.payload)
        return rows

    def _capture_context(
        self, operations: Sequence[Operation], models: Sequence[ServedModel]
    ) -> CommitContext | None:
        """The captured rows ``operations`` write, each id as the request
        gives it and as the database casts the column's value to text."""
        rows: set[tuple[str, str]] = set()
        for op, served in zip(operations, models, strict=True):
            raw_id = op.id if op.id is not None else (op.input or {}).get("id")
            if served.name not in self._captured or not isinstance(raw_id, str):
                continue
            rows.add((served.name, raw_id))
            with contextlib.suppress(SourceError):  # a bad id: _apply refuses it
                rows.add((served.name, str(to_column_value(served.id, "id", raw_id))))
        return CommitContext(frozenset(rows)) if rows else None

    def _replay(self, connection: sa.Connection, key: str, intents: Sequence[str]) -> Sequence[Any]:
        now = dt.datetime.now(dt.UTC)
        found = connection.execute(
            sa.select(
                ledger.c.request_hash,
                ledger.c.response,
                (ledger.c.expires_at <= now).label("expired"),
            ).where(ledger.c.client_tx_id == key)
        ).first()
        return _replayed(found, intents)

    def _operations(
        self, commit: CommitRequest, models: Sequence[ServedModel]
    ) -> Sequence[tuple[str, Any, dict[str, Any], str]]:
        return [
            self._operation(served, op)
            for op, served in zip(commit.operations, models, strict=True)
        ]

    def _operation(
        self, served: ServedModel, op: Operation
    ) -> tuple[str, Any, dict[str, Any], str]:
        """What ``op`` does to its row (insert, update, delete or select), the
        row's key, the column values it writes and the id as the request gave it."""
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
        if op.type == "CREATE":
            values[served.id.name] = key
            return "insert", key, values, raw_id
        if op.type == "DELETE":
            return "delete", key, values, raw_id
        if op.type in ("ARCHIVE", "UNARCHIVE"):
            archived_at = served.archived_at
            if archived_at is None:
                raise SourceError(
                    "source_archive_not_supported",
                    f"model {op.model!r} has no archivedAt column to {op.type.lower()}",
                    model=op.model,
                )
            values[archived_at.name] = _archive_stamp(archived_at) if op.type == "ARCHIVE" else None
        return ("update" if values else "select"), key, values, raw_id

    def _apply(
        self,
        connection: sa.Connection,
        served: ServedModel,
        op: Operation,
        step: tuple[str, Any, dict[str, Any], str],
    ) -> tuple[dict[str, Any], bool]:
        """The row as it stands after ``op`` (whose :meth:`_operation` is
        ``step``), and whether ``op`` changed anything."""
        kind, key, values, raw_id = step
        table, match = served.table, served.id == key
        found: dict[str, Any] | None
        if kind == "insert":
            found = self._one(connection, served, table.insert().values(values), key)
        elif kind == "delete":
            found = self._returning(connection, served, table.delete().where(match), key)
        elif kind == "update":
            found = self._returning(
                connection, served, table.update().where(match).values(values), key
            )
        else:
            found = self._select(connection, served, key)
        return _outcome(op, kind, found, raw_id)

    def _returning(
        self, connection: sa.Connection, served: ServedModel, statement: Any, key: Any
    ) -> dict[str, Any] | None:
        if _supports_returning(connection, statement):
            row = connection.execute(statement.returning(*served.selected)).first()
            return None if row is None else to_json_row(served.values_to_fields(row))
        if statement.is_delete:
            # Read, locked, what the DELETE is about to remove (MySQL 8 has
            # no DELETE … RETURNING; a commit in between must not change it).
            # A row it does not find is not deleted: that read locked nothing.
            before = self._select(connection, served, key, lock=True)
            if before is not None:
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
        self, connection: sa.Connection, served: ServedModel, key: Any, *, lock: bool = False
    ) -> dict[str, Any] | None:
        row = load_row(connection, served, key, lock=lock)
        return None if row is None else to_json_row(served.values_to_fields(row))


def _reservation(commit: CommitRequest) -> tuple[str, dict[str, Any]]:
    """The commit's key and the ledger row that reserves it."""
    key = commit.correlation_id
    assert key is not None
    now = dt.datetime.now(dt.UTC)
    return key, {
        "client_tx_id": key,
        "response": [],
        "request_hash": commit.effective_intent_hash,
        "expires_at": now + LEDGER_RETENTION,
        "created_at": now,
    }


def _replayed(found: Any, intents: Sequence[str]) -> Sequence[Any]:
    """The stored answer of a ledger row (request hash, response, expired), if it may be replayed."""
    return replayed_answer(None if found is None else (found[0], found[1], bool(found[2])), intents)


def _outcome(
    op: Operation, kind: str, found: dict[str, Any] | None, raw_id: str
) -> tuple[dict[str, Any], bool]:
    """The row as it stands after ``op``, and whether ``op`` changed anything."""
    if kind == "delete":
        # Deleting what is already gone is done, not an error.
        return (found, True) if found is not None else ({"id": raw_id}, False)
    if found is None:
        raise SourceError(
            "source_row_not_found",
            f"{op.model} {raw_id!r} does not exist",
            status=404,
            model=op.model,
        )
    return found, True


def _events(
    commit: CommitRequest,
    applied: Sequence[tuple[dict[str, Any], bool]],
    changed_besides: Mapping[int, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """One event per operation that changed a row (deleting a row that is
    already gone succeeds, but nothing happened to tell the engine about),
    after the events of what that operation changed besides its own row
    (``changed_besides``, by operation): the order it happened in."""
    events: list[dict[str, Any]] = []
    for index, (op, (row, changed)) in enumerate(zip(commit.operations, applied, strict=True)):
        events += changed_besides.get(index, [])
        if changed:
            events.append(operation_event(commit, index, op.model, row))
    return events


class _Followed:
    """The rows a commit's operations wrote to captured tables, as they left
    them. The capture triggers leave every change to these rows to the commit
    (see .capture), so a change a later operation makes to one of them (a
    foreign key's cascade, a database trigger) is the commit's to record:
    after an UPDATE or a DELETE, each is read again."""

    def __init__(self, commit: CommitRequest, context: CommitContext | None) -> None:
        self._commit = commit
        self._captured = {name for name, _ in context.rows} if context is not None else set()
        self._rows: dict[tuple[str, Any], tuple[ServedModel, dict[str, Any] | None]] = {}
        self.events: dict[int, list[dict[str, Any]]] = {}

    def to_read_after(
        self, index: int, served: ServedModel, kind: str, key: Any
    ) -> list[tuple[ServedModel, Any]]:
        """The rows to read again after operation ``index`` (on ``served``'s
        row ``key``, as ``kind``): those of the operations before it."""
        if not self._rows or kind not in ("update", "delete"):
            return []
        return [
            (other, other_key)
            for (name, other_key), (other, last) in self._rows.items()
            if last is not None and (name, other_key) != (served.name, key)
        ]

    def read(self, index: int, served: ServedModel, key: Any, now: dict[str, Any] | None) -> None:
        """Row ``key`` of ``served`` as it stands after operation ``index``."""
        _, last = self._rows[served.name, key]
        if now == last or last is None:
            return
        kind, row = ("DELETE", last) if now is None else ("UPDATE", now)
        changes = self.events.setdefault(index, [])
        event_id = f"{self._commit.correlation_id}:{index}:{len(changes) + 1}"
        changes.append(change_event(self._commit, event_id, served.name, row, kind))
        self._rows[served.name, key] = (served, now)

    def wrote(self, served: ServedModel, key: Any, kind: str, row: dict[str, Any]) -> None:
        if served.name in self._captured:
            self._rows[served.name, key] = (served, None if kind == "delete" else row)


def _direct(served: ServedModel) -> bool:
    """Whether a commit to ``served`` may skip SQLAlchemy's execution: not
    when its table has Python-side defaults (the application's classes),
    which SQLAlchemy applies as it executes."""
    return all(c.default is None and c.onupdate is None for c in served.table.columns)


_EVENTS: Final = (
    sa.select(outbox)
    .where(outbox.c.cursor > sa.bindparam("after"))
    .order_by(outbox.c.cursor)
    .limit(sa.bindparam("count"))
)


def _prune_outbox(connection: sa.Connection, read_past: int, cutoff: dt.datetime) -> int:
    # The lowest cursors first, at most one batch, never past what the engine
    # has read; a range on the key, so no scan and only these rows locked.
    # (The derived table is how MySQL takes a LIMIT in a DELETE's subquery.)
    lowest = (
        sa.select(outbox.c.cursor)
        .where(outbox.c.cursor <= read_past)
        .order_by(outbox.c.cursor)
        .limit(_PRUNE_BATCH)
        .subquery()
    )
    bound = sa.select(sa.func.max(lowest.c.cursor)).scalar_subquery()
    result = connection.execute(
        outbox.delete().where(outbox.c.cursor <= bound, outbox.c.created_at < cutoff)
    )
    return int(result.rowcount)


def _prune_ledger(connection: sa.Connection, now: dt.datetime) -> int:
    expired = (
        sa.select(ledger.c.client_tx_id)
        .where(ledger.c.expires_at < now)
        .limit(_PRUNE_BATCH)
        .subquery()
    )
    result = connection.execute(
        ledger.delete().where(ledger.c.client_tx_id.in_(sa.select(expired.c.client_tx_id)))
    )
    return int(result.rowcount)


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
