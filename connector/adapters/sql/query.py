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

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from ...errors import SourceError
from ...wire.bodies import Condition, ListQuery
from .models import ServedModel
from .values import checked_text, to_column_value, to_json_value

if TYPE_CHECKING:
    from .dialects import Dialect

__all__ = ["MAX_BOUND_VALUES", "MAX_WHERE_CONDITIONS", "ListPlan", "plan_list"]

_CURSOR_VERSION: Final = 1

# Limits of one list query, so that a request too large for the database is
# the caller's 400 rather than a driver error. PostgreSQL takes at most 65,535
# bound values in one statement, SQLite 32,766 (999 before 3.32); the adapter
# takes 10,000 (fewer on a SQLite built with a lower limit).
MAX_WHERE_CONDITIONS: Final = 64
MAX_BOUND_VALUES: Final = 10_000
# A LIKE pattern's length: SQLite refuses patterns past 50,000 bytes (as "too
# complex", which is not the request's to read); a real filter is far shorter.
MAX_PATTERN_LENGTH: Final = 10_000

_Comparison = Callable[[Any, Any], Any]
_COMPARISONS: Final[dict[str, _Comparison]] = {
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
}
# LIKE is case-sensitive and ILIKE is not, on every database, and a
# backslash escapes % and _; how that is written is the dialect's
# (Dialect.pattern_match).
PATTERN_OPERATORS: Final = frozenset({"LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"})


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


def _where_invalid(condition: Condition, why: str) -> SourceError:
    return SourceError(
        "source_where_invalid",
        f"where {condition.field!r} {condition.op}: {why}",
        field=condition.field,
        op=condition.op,
    )


# One condition's shape: its field, its operator, and what of its value the
# SQL depends on (NULL or not, IS's constant, an IN list holding NULL); never
# the value itself.
_ConditionShape = tuple[str, str, Any]


def condition_shape(
    model: ServedModel, index: int, condition: Condition, values: dict[str, Any]
) -> _ConditionShape:
    """One ``where`` entry checked: its shape, its value converted to its
    column's and put in ``values`` under its placeholder's name.

    ``= null`` means IS NULL; ``!=`` and ``NOT IN`` include rows whose value
    is NULL (they are not equal to anything given), as in the engine's own
    in-memory semantics rather than SQL's three-valued logic.
    """
    column = column_for(model, condition.field, "where")
    op, value = condition.op, condition.value
    name = _placeholder(column, index)

    if op in ("IN", "NOT IN"):
        if not isinstance(value, list):
            raise _where_invalid(condition, "the value must be an array")
        present = [to_column_value(column, condition.field, v) for v in value if v is not None]
        values[name] = present
        return condition.field, op, len(present) != len(value)

    if isinstance(value, list):
        raise _where_invalid(condition, "an array is only allowed with IN and NOT IN")

    if op in ("IS", "IS NOT"):
        if value is not None and not isinstance(value, bool):
            raise _where_invalid(condition, "the value must be null, true or false")
        return condition.field, op, value

    if op in ("=", "!="):
        if value is None:
            return condition.field, op, None
        values[name] = to_column_value(column, condition.field, value)
        return condition.field, op, True

    if value is None:
        raise _where_invalid(condition, "cannot compare with null (use IS or IS NOT)")
    if op in PATTERN_OPERATORS:
        if not isinstance(value, str):
            raise _where_invalid(condition, "the pattern must be a string")
        if len(value) > MAX_PATTERN_LENGTH:
            raise _where_invalid(condition, f"the pattern is longer than {MAX_PATTERN_LENGTH}")
        values[name] = checked_text(condition.field, value)
        return condition.field, op, True
    if op not in _COMPARISONS:  # the request model admits only known operators; belt and braces
        raise _where_invalid(condition, "unsupported operator")
    values[name] = to_column_value(column, condition.field, value)
    return condition.field, op, True


def _placeholder(column: sa.Column[Any], index: int) -> str:
    """A condition's placeholder: named after its column, as SQLAlchemy names
    its own (a driver's error that numbers a placeholder then names a field)."""
    return f"{column.name}_{index + 1}"


def condition_clause(
    model: ServedModel, index: int, shape: _ConditionShape, dialect: Dialect
) -> sa.ColumnElement[bool]:
    """One ``where`` entry of ``shape`` as a SQL expression, its value a placeholder."""
    field, op, variant = shape
    column = model.columns[field]
    name = _placeholder(column, index)

    if op in ("IN", "NOT IN"):
        listed: sa.BindParameter[Any] = sa.bindparam(name, expanding=True)
        if op == "IN":
            clause = column.in_(listed)
            return sa.or_(clause, column.is_(None)) if variant else clause
        excluded = column.not_in(listed)
        return (
            sa.and_(excluded, column.is_not(None))
            if variant
            else sa.or_(excluded, column.is_(None))
        )
    if op in ("IS", "IS NOT"):
        return column.is_(variant) if op == "IS" else column.is_not(variant)
    if op == "=":
        return column.is_(None) if variant is None else column == sa.bindparam(name)
    if op == "!=":
        return (
            column.is_not(None) if variant is None else column.is_distinct_from(sa.bindparam(name))
        )
    if op in PATTERN_OPERATORS:
        return dialect.pattern_match(column, op, name)
    return _COMPARISONS[op](column, sa.bindparam(name))  # type: ignore[no-any-return]


# ------------------------------------------------------------------ cursors


def _cursor_invalid(why: str) -> SourceError:
    return SourceError("source_cursor_invalid", f"the list cursor is not valid: {why}")


_CURSOR_SCALARS: Final = (str, int, float, bool, type(None))


def encode_cursor(order_by: str | None, descending: bool, last: tuple[Any, Any]) -> str:
    payload = {"v": _CURSOR_VERSION, "o": order_by, "d": descending, "k": list(last)}
    text = json.dumps(payload, separators=(",", ":"), default=to_json_value)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order_by: str | None, descending: bool) -> tuple[Any, Any]:
    if len(cursor) > 4096:
        raise _cursor_invalid("too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        # RecursionError: a forged cursor of deeply nested arrays.
        raise _cursor_invalid("not a cursor this source issued") from None
    if (
        not isinstance(payload, dict)
        or payload.get("v") != _CURSOR_VERSION
        or not isinstance(payload.get("k"), list)
        or len(payload["k"]) != 2
        or not all(isinstance(part, _CURSOR_SCALARS) for part in payload["k"])
    ):
        raise _cursor_invalid("not a cursor this source issued")
    if payload.get("o") != order_by or payload.get("d") is not descending:
        raise _cursor_invalid("it was issued for a different orderBy/order")
    value, last_id = payload["k"]
    return value, last_id


# ------------------------------------------------------------------ plans


# Where a page starts: at the first row, after an id, after a row whose
# order value is NULL, or after one whose order value is not.
_FIRST, _AFTER_ID, _AFTER_NULL, _AFTER_VALUE = "first", "after id", "after null", "after value"
_LIMIT: Final = "ablo_limit"
_AFTER_ID_VALUE: Final = "ablo_after_id"
_AFTER_ORDER_VALUE: Final = "ablo_after_value"


@dataclass(frozen=True, slots=True)
class ListPlan:
    """One page: its shape (everything its SQL depends on, never a value)
    and this request's values, by placeholder name. Every page of one shape
    runs the same SQL, so a database compiles it once (see :attr:`key`)."""

    model: ServedModel
    conditions: tuple[_ConditionShape, ...]
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
        if self.start != _FIRST:
            statement = statement.where(_after(order_column, model.id, self.start, self.descending))

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
        return encode_cursor(self.order_field, self.descending, (order_value, value(model.id)))


def _check_size(query: ListQuery, max_bound_values: int) -> None:
    if len(query.where) > MAX_WHERE_CONDITIONS:
        raise SourceError(
            "source_where_invalid",
            f"where has {len(query.where)} conditions; at most {MAX_WHERE_CONDITIONS} are allowed",
        )
    values = sum(
        len(condition.value) if isinstance(condition.value, list) else 1
        for condition in query.where
    )
    if values > max_bound_values:
        raise SourceError(
            "source_where_invalid",
            f"where holds {values} values (IN lists included); at most {max_bound_values} are "
            "allowed in one query",
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
    _check_size(query, max_bound_values)
    limit = min(page_size if query.limit is None else query.limit, max_page_size)
    descending = query.order == "desc"
    order_field = query.order_by if query.order_by not in (None, "id") else None
    order_column = column_for(model, order_field, "orderBy") if order_field else None
    values: dict[str, Any] = {_LIMIT: limit + 1}
    conditions = tuple(
        condition_shape(model, i, condition, values) for i, condition in enumerate(query.where)
    )
    start = _FIRST
    if query.cursor is not None:
        value, last_id = decode_cursor(query.cursor, order_field, descending)
        try:
            values[_AFTER_ID_VALUE] = to_column_value(model.id, "id", last_id)
            if order_column is not None and value is not None:
                values[_AFTER_ORDER_VALUE] = to_column_value(order_column, order_field or "", value)
        except SourceError:
            raise _cursor_invalid("its values do not fit the columns") from None
        if order_column is None:
            start = _AFTER_ID
        else:
            start = _AFTER_NULL if value is None else _AFTER_VALUE
    return ListPlan(model, conditions, start, limit, order_field, descending, values, dialect)


def _after(
    order_column: sa.Column[Any] | None,
    id_column: sa.Column[Any],
    start: str,
    descending: bool,
) -> sa.ColumnElement[bool]:
    def beyond(column: sa.Column[Any], name: str) -> sa.ColumnElement[bool]:
        # A placeholder of the column's type: SQLAlchemy refuses < and >
        # against a bare True or False (a boolean order column).
        bound = sa.bindparam(name, type_=column.type)
        return (column < bound) if descending else (column > bound)

    if order_column is None or start == _AFTER_ID:
        return beyond(id_column, _AFTER_ID_VALUE)
    if start == _AFTER_NULL:  # already among the NULLs, which sort last
        return sa.and_(order_column.is_(None), beyond(id_column, _AFTER_ID_VALUE))
    return sa.or_(
        beyond(order_column, _AFTER_ORDER_VALUE),
        sa.and_(
            order_column == sa.bindparam(_AFTER_ORDER_VALUE, type_=order_column.type),
            beyond(id_column, _AFTER_ID_VALUE),
        ),
        order_column.is_(None),
    )
