"""How does a JSON value become a column value, and back?

The engine speaks JSON; a table has types. Values from a request are
converted to the column's Python type before they are bound (so PostgreSQL
gets a timestamp, not text that happens to look like one), and a value that
cannot be converted is the caller's mistake (a 400), not a database error.
Rows go back as JSON-ready values in the same form the dispatcher would
write, so an idempotent replay returns rows equal to the first answer.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
import struct
import uuid
from collections.abc import Mapping
from typing import Any, Final

import pydantic_core
import sqlalchemy as sa

from ...errors import SourceError

__all__ = [
    "DATES_AS_WRITTEN",
    "INTEGER_BITS",
    "SINGLE_PRECISION",
    "INTEGER_UNSIGNED",
    "TEXT_CAPACITY",
    "ValueRejected",
    "json_text",
    "to_column_value",
    "to_json_row",
    "to_json_value",
]

# Where a column's integer width is kept once reflected (``Column.info``,
# from its dialect's ``integer_bits``), and whether it is unsigned (MySQL's
# UNSIGNED): the bound check below costs a dict hit, and a value past it is
# the caller's mistake (400), not an overflow inside the driver.
INTEGER_BITS: Final = "ablo_integer_bits"
INTEGER_UNSIGNED: Final = "ablo_integer_unsigned"
# How many characters of ASCII text a text column holds, where its type
# bounds it (from its dialect's ``text_capacity``; absent: unbounded or unknown).
TEXT_CAPACITY: Final = "ablo_text_capacity"
# A single-precision float column (PostgreSQL's real, MySQL's FLOAT): the
# database compares it widened to double, so a value bound against it is
# rounded to single precision first. Unrounded, the 0.1 a row serves is never
# equal to the 0.1f it holds, and a cursor after that row finds it again.
SINGLE_PRECISION: Final = "ablo_single_precision"
_FLOAT32: Final = struct.Struct("<f")
# A date or time column whose database serves the values Python cannot hold
# as its own text (PostgreSQL: 'infinity'), and reads that text back.
DATES_AS_WRITTEN: Final = "ablo_dates_as_written"
# The forms such a database serves them in: ±infinity, a year past 9999, BC, 24:00.
_AS_WRITTEN: Final = re.compile(
    r"-?infinity|\d{5,}-.*|.* BC|24:00(:00(\.0*)?)?([+-]\d\d(:?\d\d)?)?", re.IGNORECASE
)


class ValueRejected(SourceError):
    def __init__(self, field: str, expected: str, value: Any) -> None:
        super().__init__(
            "source_value_invalid",
            f"field {field!r} expects {expected}, got {_describe(value)}",
            field=field,
        )


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def python_type(column: sa.Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:  # NullType and friends: let the database decide
        return None


def _single_precision(field: str, value: float) -> float:
    try:
        rounded: float = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:
        raise ValueRejected(field, "a number within single precision", value) from None
    return rounded


def _in_range(column: sa.Column[Any], field: str, value: int) -> int:
    bits = column.info.get(INTEGER_BITS, 64)
    if column.info.get(INTEGER_UNSIGNED, False):
        if 0 <= value < 1 << bits:
            return value
        raise ValueRejected(field, f"an integer within unsigned {bits}-bit range", value)
    limit = 1 << (bits - 1)
    if -limit <= value < limit:
        return value
    raise ValueRejected(field, f"an integer within {bits}-bit range", value)


def checked_text(field: str, value: str) -> str:
    """``value``, if it is text a database can store: a lone surrogate (from a
    JSON ``"\\ud800"`` escape) is not, and drivers refuse it with an error
    that is not the caller's to read."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueRejected(field, "valid Unicode text", value) from None
    return value


def _checked_document(field: str, value: Any) -> Any:
    """``value``, if every string in it (keys too) is text a database can
    store: a JSON column's value is written as JSON text, which a lone
    surrogate cannot be encoded into."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            checked_text(field, item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return value


def to_column_value(column: sa.Column[Any], field: str, value: Any) -> Any:
    """``value`` (decoded JSON) as the Python type ``column`` binds."""
    if value is None:
        return None
    if isinstance(value, str):
        checked_text(field, value)
    if isinstance(value, dict | list):
        _checked_document(field, value)
    kind = python_type(column)
    if kind is None:
        return json.dumps(value) if isinstance(value, dict | list) else value
    if field == "id" and isinstance(value, str) and kind is int:
        # Row ids travel as strings; an integer key column takes their number.
        if value.isascii() and value.lstrip("-").isdigit() and len(value) < 21:
            return _in_range(column, field, int(value))
        raise ValueRejected(field, "an integer id", value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueRejected(field, "a boolean", value)
    if isinstance(value, bool) and kind in (int, float, decimal.Decimal):
        raise ValueRejected(field, "a number", value)
    if kind is int:
        if isinstance(value, int):
            return _in_range(column, field, value)
        if isinstance(value, float) and value.is_integer():
            return _in_range(column, field, int(value))
        raise ValueRejected(field, "an integer", value)
    if kind is float:
        if isinstance(value, int | float):
            if column.info.get(SINGLE_PRECISION, False):
                return _single_precision(field, value)
            return float(value)
        raise ValueRejected(field, "a number", value)
    if kind is decimal.Decimal:
        if isinstance(value, int | float | str):
            try:
                number = decimal.Decimal(str(value))
            except decimal.InvalidOperation:
                pass
            else:
                if number.is_finite():  # JSON has no NaN or Infinity
                    return number
        raise ValueRejected(field, "a decimal number", value)
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueRejected(field, "a string", value)
    if kind in (dt.datetime, dt.date, dt.time):
        try:
            if kind is dt.datetime:
                return _datetime(column, field, value)
            if kind is dt.date:
                return _parsed(dt.date.fromisoformat, field, "an ISO date (YYYY-MM-DD)", value)
            return _parsed(dt.time.fromisoformat, field, "an ISO time", value)
        except ValueRejected:
            if (
                isinstance(value, str)
                and column.info.get(DATES_AS_WRITTEN, False)
                and _AS_WRITTEN.fullmatch(value)
            ):
                # 'infinity', '0100-01-01 BC': what a row served, for the
                # database to read (and refuse, naming the field, if it cannot).
                # Not its other words ('tomorrow', 'now'), which no row serves.
                return value
            raise
    if kind is uuid.UUID:
        uuid_value = _parsed(uuid.UUID, field, "a UUID", value)
        # A PostgreSQL UUID column reflected with as_uuid=False binds strings.
        return uuid_value if getattr(column.type, "as_uuid", True) else str(uuid_value)
    if kind is bytes:
        return _parsed(_bytes_of, field, "base64", value)
    if kind in (dict, list):
        return value
    return value


def _bytes_of(text: str) -> bytes:
    # Rows serve bytes in the URL-safe alphabet (- and _); a client may send
    # either, and what a row served must be writable back as it is.
    return base64.b64decode(text.translate(_URL_SAFE), validate=True)


_URL_SAFE: Final = str.maketrans("-_", "+/")


def _parsed(parse: Any, field: str, expected: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse(value)
        except (ValueError, TypeError):
            pass
    raise ValueRejected(field, expected, value)


def _datetime(column: sa.Column[Any], field: str, value: Any) -> dt.datetime:
    if isinstance(value, bool):
        raise ValueRejected(field, "an ISO timestamp or epoch milliseconds", value)
    if isinstance(value, int | float):
        try:
            moment = dt.datetime.fromtimestamp(value / 1000, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueRejected(field, "epoch milliseconds in range", value) from None
    else:
        moment = _parsed(dt.datetime.fromisoformat, field, "an ISO timestamp", value)
    if not getattr(column.type, "timezone", False) and moment.tzinfo is not None:
        # A column without a time zone holds UTC wall time.
        try:
            moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError:  # 9999-12-31T23:00-05:00 is past year 9999 in UTC
            raise ValueRejected(field, "a timestamp within years 1 to 9999 in UTC", value) from None
    return moment


def to_json_value(value: Any) -> Any:
    """A column value as the JSON-ready value the engine receives.

    Types JSON has no form for (ranges, geometry, ...) are served as their
    text, rather than failing the whole row. NaN and ±Infinity become
    ``null``, as JavaScript's ``JSON.stringify`` (the engine's) writes them:
    a row holding one stays servable, and its outbox event valid JSON.
    """
    return pydantic_core.to_jsonable_python(
        value, bytes_mode="base64", inf_nan_mode="null", fallback=str
    )


def to_json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = to_json_value(dict(row))
    return result


def json_text(value: Any) -> str:
    """What the adapter writes into a ``json``/``jsonb`` column (never a bare NaN)."""
    return pydantic_core.to_json(
        value, bytes_mode="base64", inf_nan_mode="null", fallback=str
    ).decode()
