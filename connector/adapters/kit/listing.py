"""The rules of a ``list`` page, the same for every adapter.

What a ``where`` condition's value may be for each operator, how many
conditions and values one query may hold, how large a page is, and the
keyset cursor: the sort is total (``orderBy`` value, NULLs last, then
``id``), the cursor holds the last row's sort value and id, and the next
page starts strictly after it, so rows inserted meanwhile never shift a
page. Each adapter renders these rules in its own terms through a
:class:`Renderer` (SQLAlchemy expressions, Django ``Q`` objects); the
meaning of each operator is written once, in :func:`render_condition` and
:func:`render_after`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any, Final, Generic, Protocol, TypeVar

from ...errors import SourceError
from ...wire.bodies import Condition, ListQuery

__all__ = [
    "AFTER_ID",
    "AFTER_ID_VALUE",
    "AFTER_NULL",
    "AFTER_ORDER_VALUE",
    "AFTER_VALUE",
    "COMPARISON_OPERATORS",
    "FIRST",
    "MAX_BOUND_VALUES",
    "MAX_PATTERN_LENGTH",
    "MAX_WHERE_CONDITIONS",
    "PATTERN_OPERATORS",
    "ConditionShape",
    "PageShape",
    "Renderer",
    "check_size",
    "condition_shape",
    "cursor_invalid",
    "decode_cursor",
    "encode_cursor",
    "page_shape",
    "page_start",
    "render_after",
    "render_condition",
    "where_invalid",
]

_CURSOR_VERSION: Final = 1

# Limits of one list query, so that a request too large for the database is
# the caller's 400 rather than a driver error. PostgreSQL takes at most 65,535
# bound values in one statement, SQLite 32,766 (999 before 3.32); adapters
# take 10,000 (fewer on a SQLite built with a lower limit).
MAX_WHERE_CONDITIONS: Final = 64
MAX_BOUND_VALUES: Final = 10_000
# A LIKE pattern's length: SQLite refuses patterns past 50,000 bytes (as "too
# complex", which is not the request's to read); a real filter is far shorter.
MAX_PATTERN_LENGTH: Final = 10_000

COMPARISON_OPERATORS: Final = frozenset({"<", "<=", ">", ">="})
# LIKE is case-sensitive and ILIKE is not, on every database, and a
# backslash escapes % and _; how that is written is each adapter's.
PATTERN_OPERATORS: Final = frozenset({"LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"})

# Where a page starts: at the first row, after an id, after a row whose
# order value is NULL, or after one whose order value is not.
FIRST, AFTER_ID, AFTER_NULL, AFTER_VALUE = "first", "after id", "after null", "after value"
# The names under which a page's cursor values are kept (ListPlan.values).
AFTER_ID_VALUE: Final = "ablo_after_id"
AFTER_ORDER_VALUE: Final = "ablo_after_value"

#: One condition's shape: its field, its operator, and what of its value the
#: query depends on (NULL or not, IS's constant, an IN list holding NULL);
#: never the value itself.
ConditionShape = tuple[str, str, Any]


def where_invalid(condition: Condition, why: str) -> SourceError:
    return SourceError(
        "source_where_invalid",
        f"where {condition.field!r} {condition.op}: {why}",
        field=condition.field,
        op=condition.op,
    )


def cursor_invalid(why: str) -> SourceError:
    return SourceError("source_cursor_invalid", f"the list cursor is not valid: {why}")


# ------------------------------------------------------------------ conditions


def condition_shape(
    condition: Condition,
    name: str,
    values: dict[str, Any],
    convert: Callable[[Any], Any],
    pattern: Callable[[str], str],
) -> ConditionShape:
    """One ``where`` entry checked: its shape, its value converted (by
    ``convert``, the field's conversion; ``pattern`` for a LIKE pattern) and
    put in ``values`` under ``name``.

    ``= null`` means IS NULL; ``!=`` and ``NOT IN`` include rows whose value
    is NULL (they are not equal to anything given), as in the engine's own
    in-memory semantics rather than SQL's three-valued logic.
    """
    op, value = condition.op, condition.value

    if op in ("IN", "NOT IN"):
        if not isinstance(value, list):
            raise where_invalid(condition, "the value must be an array")
        present = [convert(v) for v in value if v is not None]
        values[name] = present
        return condition.field, op, len(present) != len(value)

    if isinstance(value, list):
        raise where_invalid(condition, "an array is only allowed with IN and NOT IN")

    if op in ("IS", "IS NOT"):
        if value is not None and not isinstance(value, bool):
            raise where_invalid(condition, "the value must be null, true or false")
        return condition.field, op, value

    if op in ("=", "!="):
        if value is None:
            return condition.field, op, None
        values[name] = convert(value)
        return condition.field, op, True

    if value is None:
        raise where_invalid(condition, "cannot compare with null (use IS or IS NOT)")
    if op in PATTERN_OPERATORS:
        if not isinstance(value, str):
            raise where_invalid(condition, "the pattern must be a string")
        if len(value) > MAX_PATTERN_LENGTH:
            raise where_invalid(condition, f"the pattern is longer than {MAX_PATTERN_LENGTH}")
        values[name] = pattern(value)
        return condition.field, op, True
    if op not in COMPARISON_OPERATORS:  # the request model admits only known operators
        raise where_invalid(condition, "unsupported operator")
    values[name] = convert(value)
    return condition.field, op, True


E = TypeVar("E")
C = TypeVar("C", contravariant=True)


class Renderer(Protocol, Generic[C, E]):
    """How an adapter writes the primitives of a condition on ``column``
    (whatever stands for a field there) and ``value`` (a placeholder's name
    for SQL, the value itself for an ORM)."""

    def is_null(self, column: C) -> E: ...
    def is_not_null(self, column: C) -> E: ...
    def is_(self, column: C, constant: bool) -> E: ...
    def is_not(self, column: C, constant: bool) -> E: ...
    def equal(self, column: C, value: Any) -> E: ...
    def distinct_from(self, column: C, value: Any) -> E: ...
    def in_(self, column: C, value: Any) -> E: ...
    def not_in(self, column: C, value: Any) -> E: ...
    def compare(self, column: C, op: str, value: Any) -> E: ...
    def pattern(self, column: C, op: str, value: Any) -> E: ...
    def and_(self, *clauses: E) -> E: ...
    def or_(self, *clauses: E) -> E: ...


def render_condition(shape: ConditionShape, column: C, value: Any, renderer: Renderer[C, E]) -> E:
    """One condition of ``shape`` on ``column``, ``value`` its (placeholder or) value."""
    _, op, variant = shape
    r = renderer
    if op == "IN":
        clause = r.in_(column, value)
        return r.or_(clause, r.is_null(column)) if variant else clause
    if op == "NOT IN":
        excluded = r.not_in(column, value)
        return (
            r.and_(excluded, r.is_not_null(column))
            if variant
            else r.or_(excluded, r.is_null(column))
        )
    if op == "IS":
        return r.is_null(column) if variant is None else r.is_(column, variant)
    if op == "IS NOT":
        return r.is_not_null(column) if variant is None else r.is_not(column, variant)
    if op == "=":
        return r.is_null(column) if variant is None else r.equal(column, value)
    if op == "!=":
        return r.is_not_null(column) if variant is None else r.distinct_from(column, value)
    if op in PATTERN_OPERATORS:
        return r.pattern(column, op, value)
    return r.compare(column, op, value)


# ------------------------------------------------------------------ pages


class PageShape(tuple[int, bool, "str | None"]):
    """A page's size, direction and sort field (``None``: by id alone)."""

    __slots__ = ()

    @property
    def limit(self) -> int:
        return self[0]

    @property
    def descending(self) -> bool:
        return self[1]

    @property
    def order_field(self) -> str | None:
        return self[2]


def check_size(query: ListQuery, max_bound_values: int = MAX_BOUND_VALUES) -> None:
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


def page_shape(query: ListQuery, page_size: int, max_page_size: int) -> PageShape:
    """The page's size (the request's, else ``page_size``; never past
    ``max_page_size``), direction, and sort field (``id`` sorts by id alone)."""
    limit = min(page_size if query.limit is None else query.limit, max_page_size)
    order_field = query.order_by if query.order_by not in (None, "id") else None
    return PageShape((limit, query.order == "desc", order_field))


def page_start(
    query: ListQuery,
    shape: PageShape,
    values: dict[str, Any],
    convert_id: Callable[[Any], Any],
    convert_order: Callable[[Any], Any] | None,
) -> str:
    """Where the page starts (:data:`FIRST`, :data:`AFTER_ID`, …), the
    cursor's values converted into ``values`` (:data:`AFTER_ID_VALUE`,
    :data:`AFTER_ORDER_VALUE`)."""
    if query.cursor is None:
        return FIRST
    value, last_id = decode_cursor(query.cursor, shape.order_field, shape.descending)
    try:
        values[AFTER_ID_VALUE] = convert_id(last_id)
        if convert_order is not None and value is not None:
            values[AFTER_ORDER_VALUE] = convert_order(value)
    except SourceError:
        raise cursor_invalid("its values do not fit the columns") from None
    if shape.order_field is None:
        return AFTER_ID
    return AFTER_NULL if value is None else AFTER_VALUE


class AfterRenderer(Protocol, Generic[C, E]):
    """The primitives of "strictly after the cursor" on a total order."""

    def beyond(self, column: C, value: Any, descending: bool) -> E: ...
    def equal(self, column: C, value: Any) -> E: ...
    def is_null(self, column: C) -> E: ...
    def and_(self, *clauses: E) -> E: ...
    def or_(self, *clauses: E) -> E: ...


def render_after(
    start: str,
    descending: bool,
    order_column: C | None,
    id_column: C,
    order_value: Any,
    id_value: Any,
    renderer: AfterRenderer[C, E],
) -> E:
    """The rows strictly after the cursor in the order ``orderBy`` value
    (NULLs last, in either direction), then id."""
    r = renderer
    if order_column is None or start == AFTER_ID:
        return r.beyond(id_column, id_value, descending)
    if start == AFTER_NULL:  # already among the NULLs, which sort last
        return r.and_(r.is_null(order_column), r.beyond(id_column, id_value, descending))
    return r.or_(
        r.beyond(order_column, order_value, descending),
        r.and_(r.equal(order_column, order_value), r.beyond(id_column, id_value, descending)),
        r.is_null(order_column),
    )


# ------------------------------------------------------------------ cursors


_CURSOR_SCALARS: Final = (str, int, float, bool, type(None))


def encode_cursor(
    order_by: str | None,
    descending: bool,
    last: tuple[Any, Any],
    default: Callable[[Any], Any] | None = None,
) -> str:
    """The cursor after the row whose sort value and id are ``last``
    (``default`` makes JSON of values JSON has no form for)."""
    payload = {"v": _CURSOR_VERSION, "o": order_by, "d": descending, "k": list(last)}
    text = json.dumps(payload, separators=(",", ":"), default=default)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order_by: str | None, descending: bool) -> tuple[Any, Any]:
    if len(cursor) > 4096:
        raise cursor_invalid("too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        # RecursionError: a forged cursor of deeply nested arrays.
        raise cursor_invalid("not a cursor this source issued") from None
    if (
        not isinstance(payload, dict)
        or payload.get("v") != _CURSOR_VERSION
        or not isinstance(payload.get("k"), list)
        or len(payload["k"]) != 2
        or not all(isinstance(part, _CURSOR_SCALARS) for part in payload["k"])
    ):
        raise cursor_invalid("not a cursor this source issued")
    if payload.get("o") != order_by or payload.get("d") is not descending:
        raise cursor_invalid("it was issued for a different orderBy/order")
    value, last_id = payload["k"]
    return value, last_id
