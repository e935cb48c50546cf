"""What SQL does a ``list`` query become?

Field names and operators from a request only ever *select* a reflected
column or a SQLAlchemy operator from a fixed table; nothing from the request
is spliced into SQL text, and every value is a bound parameter.

Pages use keyset pagination: the cursor holds the last row's sort value and
id, and the next page starts strictly after it. Rows inserted meanwhile
never shift a page, so no row repeats and none is skipped. The sort is total
(``orderBy`` value, NULLs last, then ``id``), which makes "after" exact.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from ...errors import SourceError
from ...wire.bodies import Condition, ListQuery
from ..kit import listing
from ..kit.listing import (
    AFTER_ID_VALUE,
    AFTER_ORDER_VALUE,
    FIRST,
    MAX_BOUND_VALUES,
    MAX_WHERE_CONDITIONS,
    ConditionShape,
    encode_cursor,
)
from .models import ServedModel
from .values import checked_text, python_type, to_column_value, to_json_value

if TYPE_CHECKING:
    from .dialects import Dialect

__all__ = ["MAX_BOUND_VALUES", "MAX_WHERE_CONDITIONS", "ListPlan", "plan_list"]

_LIMIT: Final = "ablo_limit"

_COMPARISONS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
}


def _unknown_field(model: ServedModel, field: str, role: str) -> SourceError:
    return SourceError(
        "source_unknown_field",
        f"model {model.name!r} has no field {field!r} ({role})",
        model=model.name,
        field=field,
    )


def column_for(model: ServedModel, field: str, role: str) -> sa.Column[Any]:
    column = model.columns.get(field)
    if column is None:
        raise _unknown_field(model, field, role)
    return column


def condition_shape(
    model: ServedModel, index: int, condition: Condition, values: dict[str, Any]
) -> ConditionShape:
    """One ``where`` entry checked (the shared rules, :func:`..kit.listing.condition_shape`),
    its value converted to its column's and put in ``values`` under its placeholder's name."""
    column = column_for(model, condition.field, "where")

    def pattern(text: str) -> str:
        if python_type(column) not in (str, None):
            # Bound to a boolean or a number, a pattern fails in the driver
            # (a 500), or matches the value's text in one database only.
            raise listing.where_invalid(condition, "LIKE and ILIKE apply to text fields only")
        return checked_text(condition.field, text)

    return listing.condition_shape(
        condition,
        _placeholder(column, index),
        values,
        lambda value: to_column_value(column, condition.field, value),
        pattern,
    )


# What a keyset cursor can hold and compare: a scalar the column binds back
# exactly. An array, a range or a document has no total order that survives
# the trip through JSON, and its pages would repeat or skip rows.
_ORDERABLE: Final = frozenset(
    {str, int, float, decimal.Decimal, bool, dt.datetime, dt.date, dt.time, uuid.UUID}
)


def order_column_for(model: ServedModel, field: str, dialect: Dialect) -> sa.Column[Any]:
    column = column_for(model, field, "orderBy")
    kind = python_type(column)
    if (kind is not None and kind not in _ORDERABLE) or not dialect.orderable(column.type):
        raise SourceError(
            "source_query_invalid",
            f"cannot order model {model.name!r} by field {field!r}: its values are not "
            "scalars a page can be cut after (order by a text, number, boolean, date or time)",
            model=model.name,
            field=field,
        )
    return column


def _placeholder(column: sa.Column[Any], index: int) -> str:
    """A condition's placeholder: named after its column, as SQLAlchemy names
    its own (a driver's error that numbers a placeholder then names a field)."""
    return f"{column.name}_{index + 1}"


class _Clauses:
    """The shared listing rules written as SQLAlchemy expressions; a value is
    a placeholder's name."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def is_null(self, column: sa.Column[Any]) -> sa.ColumnElement[bool]:
        return column.is_(None)

    def is_not_null(self, column: sa.Column[Any]) -> sa.ColumnElement[bool]:
        return column.is_not(None)

    def is_(self, column: sa.Column[Any], constant: bool) -> sa.ColumnElement[bool]:
        return column.is_(constant)

    def is_not(self, column: sa.Column[Any], constant: bool) -> sa.ColumnElement[bool]:
        return column.is_not(constant)

    def equal(self, column: sa.Column[Any], name: str) -> sa.ColumnElement[bool]:
        return column == sa.bindparam(name)

    def distinct_from(self, column: sa.Column[Any], name: str) -> sa.ColumnElement[bool]:
        return column.is_distinct_from(sa.bindparam(name))

    def in_(self, column: sa.Column[Any], name: str) -> sa.ColumnElement[bool]:
        return column.in_(sa.bindparam(name, expanding=True))

    def not_in(self, column: sa.Column[Any], name: str) -> sa.ColumnElement[bool]:
        return column.not_in(sa.bindparam(name, expanding=True))

    def compare(self, column: sa.Column[Any], op: str, name: str) -> sa.ColumnElement[bool]:
        return _COMPARISONS[op](column, sa.bindparam(name))  # type: ignore[no-any-return]

    def pattern(self, column: sa.Column[Any], op: str, name: str) -> sa.ColumnElement[bool]:
        return self.dialect.pattern_match(column, op, name)

    def and_(self, *clauses: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        return sa.and_(*clauses)

    def or_(self, *clauses: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        return sa.or_(*clauses)


class _After:
    """ "Strictly after the cursor" as SQLAlchemy expressions."""

    def beyond(self, column: sa.Column[Any], name: str, descending: bool) -> sa.ColumnElement[bool]:
        # A placeholder of the column's type: SQLAlchemy refuses < and >
        # against a bare True or False (a boolean order column).
        bound = sa.bindparam(name, type_=column.type)
        return (column < bound) if descending else (column > bound)

    def equal(self, column: sa.Column[Any], name: str) -> sa.ColumnElement[bool]:
        return column == sa.bindparam(name, type_=column.type)

    def is_null(self, column: sa.Column[Any]) -> sa.ColumnElement[bool]:
        return column.is_(None)

    def and_(self, *clauses: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        return sa.and_(*clauses)

    def or_(self, *clauses: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        return sa.or_(*clauses)


_AFTER: Final = _After()


def condition_clause(
    model: ServedModel, index: int, shape: ConditionShape, dialect: Dialect
) -> sa.ColumnElement[bool]:
    """One ``where`` entry of ``shape`` as a SQL expression, its value a placeholder."""
    column = model.columns[shape[0]]
    return listing.render_condition(shape, column, _placeholder(column, index), _Clauses(dialect))


# ------------------------------------------------------------------ plans


@dataclass(frozen=True, slots=True)
class ListPlan:
    """One page: its shape (everything its SQL depends on, never a value)
    and this request's values, by placeholder name. Every page of one shape
    runs the same SQL, so a database compiles it once (see :attr:`key`)."""

    model: ServedModel
    conditions: tuple[ConditionShape, ...]
    start: str
    limit: int
    order_field: str | None
    descending: bool
    values: dict[str, Any]
    dialect: Dialect

    @property
    def key(self) -> tuple[Any, ...]:
        """What tells this page's SQL from another's: its table (a new
        reflection is a new one) and its shape."""
        return (self.model.table, self.conditions, self.start, self.order_field, self.descending)

    def statement(self) -> sa.Select[Any]:
        """The SELECT of every page of this shape, its values placeholders
        (bound from :attr:`values`). It fetches one extra row to know if
        more remain."""
        model, dialect = self.model, self.dialect
        order_column = model.columns[self.order_field] if self.order_field else None
        statement = sa.select(*model.selected).where(
            *(condition_clause(model, i, shape, dialect) for i, shape in enumerate(self.conditions))
        )
        if self.start != FIRST:
            statement = statement.where(
                listing.render_after(
                    self.start,
                    self.descending,
                    order_column,
                    model.id,
                    AFTER_ORDER_VALUE,
                    AFTER_ID_VALUE,
                    _AFTER,
                )
            )

        def direction(column: sa.Column[Any]) -> Any:
            return column.desc() if self.descending else column.asc()

        if order_column is not None:
            statement = statement.order_by(
                *dialect.nulls_last(direction(order_column), order_column)
            )
        return statement.order_by(direction(model.id)).limit(
            sa.bindparam(_LIMIT, type_=sa.Integer())
        )

    def next_cursor(self, model: ServedModel, last_row: Sequence[Any]) -> str:
        """The cursor after ``last_row``, a row of ``model.selected`` in order."""

        def value(column: sa.Column[Any]) -> Any:
            return last_row[next(i for i, c in enumerate(model.selected) if c is column)]

        order_value = value(model.columns[self.order_field]) if self.order_field else None
        return encode_cursor(
            self.order_field, self.descending, (order_value, value(model.id)), to_json_value
        )


def plan_list(
    model: ServedModel,
    query: ListQuery,
    page_size: int,
    max_page_size: int,
    dialect: Dialect,
    max_bound_values: int = MAX_BOUND_VALUES,
) -> ListPlan:
    """The plan of one page: the query checked, its values converted."""
    listing.check_size(query, max_bound_values)
    shape = listing.page_shape(query, page_size, max_page_size)
    order_field = shape.order_field
    order_column = order_column_for(model, order_field, dialect) if order_field else None
    values: dict[str, Any] = {_LIMIT: shape.limit + 1}
    conditions = tuple(
        condition_shape(model, i, condition, values) for i, condition in enumerate(query.where)
    )
    start = listing.page_start(
        query,
        shape,
        values,
        lambda last_id: to_column_value(model.id, "id", last_id),
        None
        if order_column is None
        else lambda value: to_column_value(order_column, order_field or "", value),
    )
    return ListPlan(
        model, conditions, start, shape.limit, order_field, shape.descending, values, dialect
    )
