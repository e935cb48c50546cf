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


def condition_clause(
    model: ServedModel, condition: Condition, dialect: Dialect
) -> sa.ColumnElement[bool]:
    """One ``where`` entry as a SQL expression, with NULL handled on purpose.

    ``= null`` means IS NULL; ``!=`` and ``NOT IN`` include rows whose value
    is NULL (they are not equal to anything given), as in the engine's own
    in-memory semantics rather than SQL's three-valued logic.
    """
    column = column_for(model, condition.field, "where")
    op, value = condition.op, condition.value

    if op in ("IN", "NOT IN"):
        if not isinstance(value, list):
            raise _where_invalid(condition, "the value must be an array")
        present = [to_column_value(column, condition.field, v) for v in value if v is not None]
        has_null = len(present) != len(value)
        if op == "IN":
            clause = column.in_(present)
            return sa.or_(clause, column.is_(None)) if has_null else clause
        excluded = column.not_in(present)
        return (
            sa.and_(excluded, column.is_not(None))
            if has_null
            else sa.or_(excluded, column.is_(None))
        )

    if isinstance(value, list):
        raise _where_invalid(condition, "an array is only allowed with IN and NOT IN")

    if op in ("IS", "IS NOT"):
        if value is not None and not isinstance(value, bool):
            raise _where_invalid(condition, "the value must be null, true or false")
        return column.is_(value) if op == "IS" else column.is_not(value)

    if op == "=":
        if value is None:
            return column.is_(None)
        return column == to_column_value(column, condition.field, value)  # type: ignore[no-any-return]
    if op == "!=":
        if value is None:
            return column.is_not(None)
        return column.is_distinct_from(to_column_value(column, condition.field, value))

    if value is None:
        raise _where_invalid(condition, "cannot compare with null (use IS or IS NOT)")
    if op in PATTERN_OPERATORS:
        if not isinstance(value, str):
            raise _where_invalid(condition, "the pattern must be a string")
        if len(value) > MAX_PATTERN_LENGTH:
            raise _where_invalid(condition, f"the pattern is longer than {MAX_PATTERN_LENGTH}")
        return dialect.pattern_match(column, op, checked_text(condition.field, value))
    compare = _COMPARISONS.get(op)
    if compare is None:  # the request model admits only known operators; belt and braces
        raise _where_invalid(condition, "unsupported operator")
    return compare(column, to_column_value(column, condition.field, value))  # type: ignore[no-any-return]


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


@dataclass(frozen=True, slots=True)
class ListPlan:
    statement: sa.Select[Any]
    limit: int
    order_field: str | None
    descending: bool

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
    """The SELECT for one page (it fetches one extra row to know if more remain)."""
    _check_size(query, max_bound_values)
    limit = min(page_size if query.limit is None else query.limit, max_page_size)
    descending = query.order == "desc"
    order_field = query.order_by if query.order_by not in (None, "id") else None
    order_column = column_for(model, order_field, "orderBy") if order_field else None
    id_column = model.id

    statement = sa.select(*model.selected).where(
        *(condition_clause(model, condition, dialect) for condition in query.where)
    )

    if query.cursor is not None:
        value, last_id = decode_cursor(query.cursor, order_field, descending)
        try:
            last_id = to_column_value(id_column, "id", last_id)
            if order_column is not None and value is not None:
                value = to_column_value(order_column, order_field or "", value)
        except SourceError:
            raise _cursor_invalid("its values do not fit the columns") from None
        statement = statement.where(_after(order_column, id_column, value, last_id, descending))

    def direction(column: sa.Column[Any]) -> Any:
        return column.desc() if descending else column.asc()

    if order_column is not None:
        statement = statement.order_by(*dialect.nulls_last(direction(order_column), order_column))
    statement = statement.order_by(direction(id_column)).limit(limit + 1)
    return ListPlan(statement, limit, order_field, descending)


def _after(
    order_column: sa.Column[Any] | None,
    id_column: sa.Column[Any],
    value: Any,
    last_id: Any,
    descending: bool,
) -> sa.ColumnElement[bool]:
    def beyond(column: sa.Column[Any], value: Any) -> sa.ColumnElement[bool]:
        # A bound of the column's type: SQLAlchemy refuses < and > against a
        # bare True or False (a boolean order column).
        bound = sa.literal(value, column.type)
        return (column < bound) if descending else (column > bound)

    if order_column is None:
        return beyond(id_column, last_id)
    if value is None:  # already among the NULLs, which sort last
        return sa.and_(order_column.is_(None), beyond(id_column, last_id))
    return sa.or_(
        beyond(order_column, value),
        sa.and_(order_column == value, beyond(id_column, last_id)),
        order_column.is_(None),
    )
