"""What does the engine get back? One :class:`Answer` per request.

An answer is an HTTP status and a JSON body, because the engine reads it
exactly as it reads a webhook endpoint's response; it travels inside a
``response`` frame, never over HTTP. It also carries what an operator wants
to know about the request (operation, model, error code), for logs and
metrics. This module builds every answer: the success bodies from what a
handler returned, and the error bodies of ``docs/protocol.md`` §5.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core

from ..wire.bodies import CommitResult, Delta, Event, EventsPage, ListPage

__all__ = ["Answer", "dumps", "error_answer", "success_body", "timeout_answer"]


@dataclass(slots=True)
class Answer:
    """One answer to one request, plus what an operator wants to know about it."""

    status: int
    body: str
    operation: str | None = None
    model: str | None = None
    error: str | None = None
    replayed: bool = False


def dumps(value: Any) -> str:
    """Compact JSON as JavaScript's ``JSON.stringify`` writes it.

    NaN and the infinities become ``null``; a string holding a lone
    surrogate (which UTF-8 cannot carry) is written as its ``\\ud800``
    escape. Rows are serialized by pydantic-core, so ``datetime``,
    ``Decimal``, ``UUID``, dataclasses and models need no conversion.
    """
    try:
        return pydantic_core.to_json(value, inf_nan_mode="null").decode("utf-8")
    except pydantic_core.PydanticSerializationError as error:
        if "surrogates not allowed" not in str(error):
            raise
    plain = pydantic_core.to_jsonable_python(value, inf_nan_mode="null")
    return json.dumps(plain, separators=(",", ":"), allow_nan=False)


def error_answer(
    status: int,
    code: str,
    message: str,
    *,
    operation: str | None = None,
    model: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> Answer:
    body = {"error": code, "message": message, **(fields or {})}
    return Answer(status, dumps(body), operation=operation, model=model, error=code)


def timeout_answer(operation: str | None, model: str | None, elapsed: float) -> Answer:
    return error_answer(
        504,
        "source_connector_timeout",
        f"the handler did not answer within {elapsed:.1f} s",
        operation=operation,
        model=model,
    )


def success_body(operation: str, result: Any) -> Any:
    """The 200 body for what a handler's ``operation`` returned; TypeError if unusable."""
    if operation == "load":
        return {"row": _row_or_none(result)}
    if operation == "list":
        return _list_body(result)
    if operation == "commit":
        return _commit_body(result)
    return _events_body(result)


def _row_or_none(row: Any) -> Any:
    if (
        row is None
        or isinstance(row, Mapping)
        or hasattr(row, "__dataclass_fields__")
        or hasattr(row, "model_dump")
    ):
        return row
    raise TypeError(f"load returned {type(row).__name__}; expected a mapping or None")


def _list_body(result: Any) -> Any:
    if isinstance(result, ListPage):
        return result.to_wire()
    if isinstance(result, Sequence) and not isinstance(result, str | bytes):
        return {"rows": list(result)}
    if isinstance(result, Mapping) and "rows" in result:
        return result
    raise TypeError(f"list returned {type(result).__name__}; expected a list of rows or a ListPage")


def _wire_items(items: Any) -> Any:
    """A sequence whose answer objects (``Delta``, ``Event``) take their wire form."""
    if isinstance(items, Sequence) and not isinstance(items, str | bytes):
        return [item.to_wire() if isinstance(item, Delta | Event) else item for item in items]
    return items


def _commit_body(result: Any) -> Any:
    if result is None:
        return {}
    if isinstance(result, CommitResult):
        return result.to_wire()
    if isinstance(result, Mapping):
        # A mapping may hold Delta objects: they go out camelCase, as in a CommitResult.
        return {**result, "deltas": _wire_items(result["deltas"])} if "deltas" in result else result
    raise TypeError(
        f"commit returned {type(result).__name__}; expected a CommitResult or a mapping"
    )


def _events_body(result: Any) -> Any:
    if isinstance(result, EventsPage):
        return result.to_wire()
    if isinstance(result, Mapping) and "events" in result:
        return {**result, "events": _wire_items(result["events"])}
    if isinstance(result, Sequence) and not isinstance(result, str | bytes):
        return EventsPage(events=list(result)).to_wire()
    raise TypeError(f"events returned {type(result).__name__}; expected an EventsPage")
