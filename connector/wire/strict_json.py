"""JSON exactly as the engine (JavaScript) reads and writes it.

Two rules the standard library and pydantic's fast parser bend: JSON has no
``NaN`` or ``Infinity`` (both parsers accept them), and a validation error
must never echo the input it rejected (it may hold secrets or row data).

Incoming messages are parsed in one of two ways. :func:`validate_fast`
parses and validates in one pass inside pydantic-core: the common case, and
the only one on the request path. When it returns ``None`` the caller takes
the slow path, :func:`loads` then its own validation, only to say exactly
what is wrong.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

__all__ = ["WireModel", "describe_validation_error", "loads", "validate_fast"]

_T = TypeVar("_T")


class WireModel(BaseModel):
    """A frozen model read from and written as the engine's camelCase JSON.

    Python names are snake_case; unknown fields are ignored, as the engine's
    own decoder strips them.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
        extra="ignore",
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str | bytes) -> Any:
    """``json.loads`` without NaN/Infinity. Raises ValueError or RecursionError."""
    return json.loads(text, parse_constant=_reject_constant)


def validate_fast(adapter: TypeAdapter[_T], text: str | bytes) -> _T | None:
    """``text`` parsed and validated in one pass, or None when the slow path must decide.

    pydantic's parser takes the literals JSON does not have, so a text that
    may hold one always goes the slow way (rarely: only a string value that
    contains the word). UTF-8 bytes are parsed as they are, never decoded
    to a ``str`` first.
    """
    if isinstance(text, str):
        if "NaN" in text or "Infinity" in text:
            return None
    elif b"NaN" in text or b"Infinity" in text:
        return None
    try:
        return adapter.validator.validate_json(text)  # type: ignore[no-any-return]
    except ValidationError:
        return None


def describe_validation_error(error: ValidationError, subject: str) -> str:
    """The first few issues as ``field: problem``, never echoing input values."""
    parts = []
    for issue in error.errors(include_url=False, include_input=False)[:5]:
        location = ".".join(str(p) for p in issue["loc"]) or subject
        parts.append(f"{location}: {issue['msg']}")
    return "; ".join(parts)
