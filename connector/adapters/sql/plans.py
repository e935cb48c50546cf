"""Which list shapes cannot be fast? The database's own plan, read once per shape.

A list page ordered by a column no index serves makes the database read and
sort every row of the table before it returns the first 51: at a million
rows, 104 ms against 2.6 ms for an indexed filter (p50 through the
connector, PostgreSQL 15). Nothing in the answer says why. So the first
time a shape is served, its plan is read in the background (never on the
request's path, one at a time, at most :data:`MAX_PENDING` waiting, at most
:data:`MAX_SHAPES_READ` shapes remembered) and a plan that scans or sorts
the whole table is logged once, with the index that would serve the shape
(for the keyset cursor: the equality filters' columns, the order column,
then the id), and counted.

How a plan says "every row" is the database's: PostgreSQL's ``Seq Scan``
and ``Sort`` nodes (``EXPLAIN (FORMAT JSON)``), MySQL's and MariaDB's
``access_type: ALL`` and filesort (``EXPLAIN FORMAT=JSON``), SQLite's
``SCAN t`` without an index and ``USE TEMP B-TREE FOR ORDER BY``
(``EXPLAIN QUERY PLAN``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from .dialects import dialect_named

if TYPE_CHECKING:
    from .query import ListPlan

__all__ = ["FullTableShape", "ShapePlans", "full_table_reasons", "index_advice"]

log = logging.getLogger("connector.sql")

MAX_PENDING: Final = 16
MAX_SHAPES_READ: Final = 1024
# Below this many rows (the planner's estimate, where it gives one) reading
# them all is what a planner rightly chooses, and no index would help.
MIN_ROWS: Final = 1000


@dataclass(frozen=True, slots=True)
class FullTableShape:
    """A list shape whose plan reads or sorts every row, and what would serve it."""

    model: str
    table: str
    shape: str
    reasons: tuple[str, ...]
    index: str

    def line(self) -> str:
        return (
            f"list of model {self.model!r} ({self.shape}) makes the database "
            f"{' and '.join(self.reasons)} of table {self.table}: an index on {self.index} "
            "would serve it"
        )


def describe_shape(plan: ListPlan) -> str:
    """A shape in the request's words: its filters' fields and operators, its order."""
    where = ", ".join(f"{field} {op}" for field, op, _ in plan.conditions) or "no filter"
    order = plan.order_field or "id"
    return f"where {where}; orderBy {order} {'desc' if plan.descending else 'asc'}"


def index_advice(plan: ListPlan) -> str:
    """The index that serves ``plan``'s shape: equality filters, then the order, then the id."""
    model = plan.model
    columns = [model.columns[field].name for field, op, _ in plan.conditions if op == "="]
    if plan.order_field is not None:
        columns.append(model.columns[plan.order_field].name)
    columns.append(model.id.name)
    return f"{model.table.fullname} ({', '.join(dict.fromkeys(columns))})"


def explain_sql(dialect_name: str) -> str:
    """What precedes a SELECT to read its plan on ``dialect_name`` (the
    adapter's name of a dialect: ``mysql`` serves MariaDB too)."""
    if dialect_name == "postgresql":
        return "EXPLAIN (FORMAT JSON) "
    if dialect_name == "mysql":
        return "EXPLAIN FORMAT=JSON "
    return "EXPLAIN QUERY PLAN "


def read_plan(connection: sa.Connection, plan: ListPlan) -> Any:
    """The database's plan of ``plan``'s page, as its driver returns it."""
    dialect = connection.dialect
    compiled = plan.statement().compile(dialect=dialect)
    params = compiled.construct_params(plan.values)
    parameters: Any = (
        tuple(params[name] for name in compiled.positiontup or ())
        if compiled.positional
        else params
    )
    explain = explain_sql(dialect_named(dialect.name).name)
    rows = connection.exec_driver_sql(explain + compiled.string, parameters)
    return [tuple(row) for row in rows]


def full_table_reasons(dialect_name: str, rows: list[tuple[Any, ...]]) -> tuple[str, ...]:
    """Why a plan reads every row ("scan every row", "sort every row"), or nothing."""
    reasons: list[str] = []
    if dialect_name == "sqlite":
        for row in rows:
            detail = str(row[-1])
            if detail.startswith("SCAN ") and " USING " not in detail:
                reasons.append("scan every row")
            if "TEMP B-TREE FOR ORDER BY" in detail:
                reasons.append("sort every row")
        return tuple(dict.fromkeys(reasons))
    document = rows[0][0]
    if isinstance(document, str | bytes):
        document = json.loads(document)
    for node in _nodes(document):
        if dialect_name == "postgresql":
            if node.get("Node Type") == "Seq Scan":
                reasons.append("scan every row")
            elif node.get("Node Type") in ("Sort", "Incremental Sort"):
                reasons.append("sort every row")
        else:
            if node.get("access_type") == "ALL":
                reasons.append("scan every row")
            if "filesort" in node or node.get("using_filesort") is True:
                reasons.append("sort every row")
    return tuple(dict.fromkeys(reasons))


def _nodes(document: Any) -> Iterator[dict[str, Any]]:
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            yield item
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def estimated_rows(connection: sa.Connection, table: sa.Table) -> float | None:
    """The database's estimate of ``table``'s rows (None: it keeps none)."""
    name = dialect_named(connection.dialect.name).name
    if name == "postgresql":
        found = connection.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": table.fullname},
        ).scalar()
    elif name == "mysql":
        found = connection.execute(
            sa.text(
                "SELECT TABLE_ROWS FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :name"
            ),
            {"schema": table.schema, "name": table.name},
        ).scalar()
    else:
        return None
    return None if found is None else float(found)


class ShapePlans:
    """Reads the plan of each list shape once, in the background, and reports
    the shapes that read every row (:attr:`full_table`)."""

    def __init__(self, dialect_name: str, read: Callable[..., Awaitable[Any]]) -> None:
        self._dialect_name = dialect_name
        self._read = read
        self._seen: set[Any] = set()
        self._pending: asyncio.Queue[ListPlan] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.full_table: list[FullTableShape] = []

    def served(self, plan: ListPlan) -> None:
        """A page of ``plan``'s shape was served: read its plan if it is new."""
        key = plan.key
        if key in self._seen or len(self._seen) >= MAX_SHAPES_READ:
            return
        if self._pending is None:
            self._pending = asyncio.Queue(MAX_PENDING)
        try:
            self._pending.put_nowait(plan)
        except asyncio.QueueFull:
            return  # read when it is served again
        self._seen.add(key)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._read_plans())

    async def inspect(self, plan: ListPlan) -> FullTableShape | None:
        """Read ``plan``'s plan now; the shape if it reads every row."""
        rows = await self._read(read_plan, plan)
        reasons = full_table_reasons(self._dialect_name, rows)
        if not reasons:
            return None
        table_rows = await self._read(estimated_rows, plan.model.table)
        if table_rows is not None and table_rows < MIN_ROWS:
            return None  # reading them all is what a planner rightly chooses
        return FullTableShape(
            plan.model.name,
            plan.model.table.fullname,
            describe_shape(plan),
            reasons,
            index_advice(plan),
        )

    async def _read_plans(self) -> None:
        assert self._pending is not None
        while not self._pending.empty():
            plan = self._pending.get_nowait()
            try:
                found = await self.inspect(plan)
            except Exception as error:  # a plan is advice: never a request's failure
                log.debug("could not read the plan of a list shape: %s", type(error).__name__)
                continue
            if found is not None:
                self.full_table.append(found)
                log.warning("%s", found.line())

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            # Waited for without taking its cancellation as ours.
            await asyncio.wait([self._worker])
