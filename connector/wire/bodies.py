"""What does the engine ask, and what may a handler answer?

Models for the four Data Source request bodies that travel inside a
``request`` frame (``docs/protocol.md`` §5) and the shapes a handler returns.
Wire names are camelCase; Python names are snake_case.

Request bodies are parsed with pydantic. Answers are small dataclasses with a
``to_wire()`` method: a handler builds them from its own rows, so validating
every row again would only cost time.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from .strict_json import WireModel, validate_fast

__all__ = [
    "OPERATIONS",
    "OPERATORS",
    "CommitEcho",
    "CommitRequest",
    "CommitResult",
    "Condition",
    "Delta",
    "Event",
    "EventsPage",
    "EventsRequest",
    "ListPage",
    "ListQuery",
    "ListRequest",
    "LoadRequest",
    "Operation",
    "OperationName",
    "Operator",
    "Scope",
    "SourceRequest",
    "canonical_json",
    "describe_request_error",
    "operations_intent_hash",
    "parse_source_request",
    "previous_operations_intent_hash",
    "parse_source_request_fast",
]

# The four Data Source operations: the request body's ``type``, the handler
# method that serves it, and the metrics label. Written here only.
OperationName = Literal["load", "list", "commit", "events"]
OPERATIONS: Final[tuple[OperationName, ...]] = get_args(OperationName)

Operator = Literal[
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "IN",
    "NOT IN",
    "IS",
    "IS NOT",
    "LIKE",
    "NOT LIKE",
    "ILIKE",
    "NOT ILIKE",
]
OPERATORS: Final[frozenset[str]] = frozenset(Operator.__args__)  # type: ignore[attr-defined]
OperationType = Literal["CREATE", "UPDATE", "DELETE", "ARCHIVE", "UNARCHIVE"]
Primitive = str | int | float | bool | None

MAX_CORRELATION_ID_LENGTH: Final = 255
MAX_ECHO_PAYLOAD_BYTES: Final = 256 * 1024

NonEmptyStr = Annotated[str, StringConstraints(strict=True, min_length=1)]
StrictStr = Annotated[str, StringConstraints(strict=True)]
# Strict members: lax parsing would turn JSON `true` into the integer 1.
Scalar = Annotated[
    StrictBool | StrictInt | StrictFloat | StrictStr | None, Field(union_mode="left_to_right")
]


class Condition(WireModel):
    """One ``where`` entry. ``[field, value]`` on the wire means ``op="="``."""

    field: NonEmptyStr
    op: Operator = "="
    value: Scalar | list[Scalar] = None

    @model_validator(mode="before")
    @classmethod
    def _from_tuple(cls, data: Any) -> Any:
        if isinstance(data, list | tuple):
            if len(data) == 2:
                return {"field": data[0], "op": "=", "value": data[1]}
            if len(data) == 3:
                return {"field": data[0], "op": data[1], "value": data[2]}
            raise ValueError("a where entry is [field, value] or [field, op, value]")
        return data


class ListQuery(WireModel):
    where: list[Condition] = Field(default_factory=list)
    limit: Annotated[int, Field(ge=0)] | None = None
    order_by: StrictStr | None = None
    order: Literal["asc", "desc"] | None = None
    related: list[StrictStr] | None = None
    cursor: StrictStr | None = None


class Scope(WireModel):
    """Advisory request context the engine attaches; enforce it in the handler."""

    participant_id: StrictStr | None = None
    participant_kind: StrictStr | None = None
    organization_id: StrictStr | None = None
    branch_id: StrictStr | None = None
    project_id: StrictStr | None = None
    required_sync_groups: list[StrictStr] | None = None


def _whole_number(value: Any) -> Any:
    """JSON has one number type: ``2e2`` and ``200.0`` are the integer 200, as in JavaScript."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: A position in the engine's log (``readAt``): a non-negative integer.
Watermark = Annotated[StrictInt, BeforeValidator(_whole_number), Field(ge=0)]


class Operation(WireModel):
    """One write of a commit: the engine's commit operation, less what it settles itself.

    The fields are those of the engine's ``commitOperationSchema`` (0.49)
    without ``bypass`` and ``fenceToken``, which the engine checks before a
    commit reaches a source. ``claim_id`` names the claim the write was made
    under, when there was one.
    """

    type: OperationType
    model: NonEmptyStr
    id: NonEmptyStr | None = None
    input: dict[str, Any] | None = None
    transaction_id: StrictStr | None = None
    read_at: Watermark | None = None
    on_stale: Literal["reject", "overwrite", "notify"] | None = None
    claim_id: NonEmptyStr | None = None


def _payload_within_limit(value: Any) -> Any:
    if (
        isinstance(value, str)
        and len(value.encode("utf-8", "surrogatepass")) > MAX_ECHO_PAYLOAD_BYTES
    ):
        raise ValueError(f"echo payload exceeds {MAX_ECHO_PAYLOAD_BYTES} UTF-8 bytes")
    return value


class CommitEcho(WireModel):
    kind: Literal["postgres-wal"]
    payload: Annotated[NonEmptyStr, BeforeValidator(_payload_within_limit)]


class LoadRequest(WireModel):
    type: Literal["load"] = "load"
    model: NonEmptyStr
    id: NonEmptyStr
    scope: Scope | None = None


class ListRequest(WireModel):
    type: Literal["list"] = "list"
    model: NonEmptyStr
    query: ListQuery = ListQuery()
    scope: Scope | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_query(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("query", ...) is None:
            return {k: v for k, v in data.items() if k != "query"}
        return data


class CommitRequest(WireModel):
    """A commit: every operation applies in one transaction, or none does.

    ``correlation_id`` is the idempotency key (``clientTxId`` is its legacy
    wire name and is folded into it). A replay with the same key and intent
    must return the original rows without writing again.

    The fallback intent hash is computed over the operations as the engine
    sent them, and kept: a copy whose model names were resolved to the
    source's own (see ``connector.serve.models``) hashes the same.
    """

    # The fallback hash of the operations as sent, and those operations (the
    # hash connector 0.1.0 stored is computed from them only on a replay).
    _sent_hash: str | None = PrivateAttr(default=None)
    _sent_operations: list[Operation] | None = PrivateAttr(default=None)

    type: Literal["commit"] = "commit"
    operations: Annotated[list[Operation], Field(min_length=1)]
    correlation_id: (
        Annotated[str, StringConstraints(strict=True, min_length=1, max_length=255)] | None
    ) = None
    client_tx_id: StrictStr | None = None
    model: NonEmptyStr | None = None
    intent_hash: Annotated[str, StringConstraints(pattern=r"^[a-f0-9]{64}$")] | None = None
    echo: CommitEcho | None = None
    scope: Scope | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_correlation_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("correlationId") is None:
            legacy = data.get("clientTxId")
            if legacy is not None:
                return {**data, "correlationId": legacy}
        return data

    @property
    def effective_intent_hash(self) -> str:
        """``intent_hash``, or the SHA-256 of the canonical operations (as the engine's
        reference computes it)."""
        return self.intent_hash or self._operations_hash()

    @property
    def replayable_intent_hashes(self) -> tuple[str, ...]:
        """Every hash a ledger row of this commit may hold: :attr:`effective_intent_hash`,
        then, without ``intent_hash``, the one connector 0.1.0 stored (see
        :func:`previous_operations_intent_hash`) when it differs."""
        if self.intent_hash:
            return (self.intent_hash,)
        current = self._operations_hash()
        previous = previous_operations_intent_hash(self._sent_operations or self.operations)
        return (current,) if previous == current else (current, previous)

    def with_operations(self, operations: Sequence[Operation], model: str | None) -> CommitRequest:
        """A copy with other operations and model hint (their model names resolved),
        whose fallback intent hashes stay those of the operations as sent."""
        if self.intent_hash is None:
            self._operations_hash()
        copy = self.model_copy(update={"operations": list(operations), "model": model})
        copy._sent_hash = self._sent_hash
        copy._sent_operations = self._sent_operations or self.operations
        return copy

    def _operations_hash(self) -> str:
        if self._sent_hash is None:
            self._sent_hash = operations_intent_hash(self.operations)
        return self._sent_hash


class EventsRequest(WireModel):
    type: Literal["events"] = "events"
    cursor: StrictStr | None = None
    limit: Annotated[int, Field(ge=0)] | None = None
    scope: Scope | None = None


SourceRequest = Annotated[
    LoadRequest | ListRequest | CommitRequest | EventsRequest,
    Field(discriminator="type"),
]
_REQUEST_ADAPTER: TypeAdapter[SourceRequest] = TypeAdapter(SourceRequest)


def parse_source_request(value: Any) -> SourceRequest:
    """Validate an already-decoded body; raises ``pydantic.ValidationError``."""
    return _REQUEST_ADAPTER.validate_python(value)


def parse_source_request_fast(text: str) -> SourceRequest | None:
    """A valid body in one parsing pass, or None (then diagnose it the slow way)."""
    return validate_fast(_REQUEST_ADAPTER, text)


def describe_request_error(error: ValidationError, body: Any) -> str:
    """What is wrong with a request ``body``, as ``location: problem`` (at most five).

    A ``where`` value of a type no condition takes (an object, say) is one
    sentence naming the condition's field, instead of pydantic's report of
    every member of the union it tried. No input value is ever echoed.
    """
    parts: list[str] = []
    explained: set[tuple[str | int, ...]] = set()
    for issue in error.errors(include_url=False, include_input=False):
        location = issue["loc"]
        value_at = _where_value_location(location)
        if value_at is not None:
            if value_at not in explained:
                explained.add(value_at)
                condition = _raw_condition(body, value_at)
                parts.append(f"{_dotted(value_at)}: {_where_value_problem(condition)}")
        else:
            parts.append(f"{_dotted(location) or 'body'}: {issue['msg']}")
        if len(parts) == 5:
            break
    return "; ".join(parts)


def _dotted(location: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in location)


def _where_value_location(location: Sequence[str | int]) -> tuple[str | int, ...] | None:
    """``(…, "where", n, "value")`` when the issue is about that condition's value."""
    for at in range(len(location) - 2):
        if (
            location[at] == "where"
            and isinstance(location[at + 1], int)
            and location[at + 2] == "value"
        ):
            return tuple(location[: at + 3])
    return None


def _raw_condition(body: Any, value_at: tuple[str | int, ...]) -> Any:
    """The ``where`` entry as sent (``[field, value]``, ``[field, op, value]`` or an object)."""
    query = body.get("query") if isinstance(body, Mapping) else None
    where = query.get("where") if isinstance(query, Mapping) else None
    index = value_at[-2]
    if isinstance(where, list) and isinstance(index, int) and 0 <= index < len(where):
        return where[index]
    return None


def _json_kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a JSON object"
    if isinstance(value, list):
        return "a list"
    return "a value of another kind"


def _where_value_problem(condition: Any) -> str:
    if isinstance(condition, Mapping):
        field, value = condition.get("field"), condition.get("value")
    elif isinstance(condition, list) and len(condition) in (2, 3):
        field, value = condition[0], condition[-1]
    else:
        field, value = None, None
    found = _json_kind(value)
    if isinstance(value, list):
        inner = next((item for item in value if isinstance(item, Mapping | list)), None)
        found = "a list holding " + _json_kind(inner)
    subject = f"the condition on {field!r}" if isinstance(field, str) else "this condition"
    return (
        f"{subject} compares with {found}; a condition's value is a string, a number, "
        "true, false or null, or a list of those for IN and NOT IN"
    )


# ---------------------------------------------------------------- answers


def _without_none(pairs: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in pairs.items() if value is not None}


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of ``list`` rows; ``next_cursor`` when more remain."""

    rows: Sequence[Any]
    next_cursor: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return _without_none({"rows": list(self.rows), "nextCursor": self.next_cursor})


@dataclass(frozen=True, slots=True)
class Event:
    """A change that happened in the store; ``id`` is the engine's replay key."""

    id: str
    model: str
    entity_id: str
    type: str
    data: Mapping[str, Any] | None = None
    organization_id: str | None = None
    correlation_id: str | None = None
    transaction_id: str | None = None
    occurred_at: int | float | None = None
    client_tx_id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return _without_none(
            {
                "id": self.id,
                "model": self.model,
                "entityId": self.entity_id,
                "type": self.type,
                "data": self.data,
                "organizationId": self.organization_id,
                "clientTxId": self.client_tx_id,
                "correlationId": self.correlation_id,
                "transactionId": self.transaction_id,
                "occurredAt": self.occurred_at,
            }
        )


@dataclass(frozen=True, slots=True)
class EventsPage:
    events: Sequence[Event | Mapping[str, Any]] = ()
    next_cursor: str | None = None

    def to_wire(self) -> dict[str, Any]:
        events = [e.to_wire() if isinstance(e, Event) else e for e in self.events]
        return _without_none({"events": events, "nextCursor": self.next_cursor})


@dataclass(frozen=True, slots=True)
class Delta:
    model: str
    id: str
    type: str
    data: Mapping[str, Any] | None = None
    transaction_id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return _without_none(
            {
                "model": self.model,
                "id": self.id,
                "type": self.type,
                "data": self.data,
                "transactionId": self.transaction_id,
            }
        )


@dataclass(frozen=True, slots=True)
class CommitResult:
    """Rows as they stand after the write, and/or explicit deltas."""

    rows: Sequence[Any] | None = None
    deltas: Sequence[Delta | Mapping[str, Any]] | None = field(default=None)

    def to_wire(self) -> dict[str, Any]:
        deltas = (
            None
            if self.deltas is None
            else [d.to_wire() if isinstance(d, Delta) else d for d in self.deltas]
        )
        return _without_none(
            {"rows": None if self.rows is None else list(self.rows), "deltas": deltas}
        )


# ------------------------------------------------------- canonical intent


def _shortest_digits(value: float) -> tuple[str, int]:
    """Digits ``d`` and exponent ``n`` with ``value == 0.d * 10**n`` (value > 0).

    ``repr`` already finds the shortest digits that round-trip, as JavaScript
    does; only the layout differs.
    """
    mantissa, _, exponent = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    stripped = digits.lstrip("0")
    point = len(whole) + (int(exponent) if exponent else 0) - (len(digits) - len(stripped))
    return stripped.rstrip("0"), point


def _js_number(value: float) -> str:
    """``value`` as JavaScript's ``Number.prototype.toString`` writes it."""
    if not math.isfinite(value):
        return "null"  # JSON.stringify writes NaN and the infinities as null
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    digits, n = _shortest_digits(abs(value))
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exponent = n - 1
    exp_text = f"e{'+' if exponent >= 0 else '-'}{abs(exponent)}"
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return sign + head + exp_text


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_json_string: Callable[[str], str] = json.encoder.encode_basestring
# Integers JavaScript holds exactly; beyond them JSON.parse rounds to a double.
_SAFE_INTEGER: Final = 2**53


def _js_integer(value: int) -> str:
    if -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
        return str(value)
    try:
        return _js_number(float(value))
    except OverflowError:
        return "null"  # JSON.parse reads it as ±Infinity, which JSON.stringify writes as null


def _utf16_order(key: str) -> bytes:
    """JavaScript sorts strings by UTF-16 code unit, not by code point."""
    return key.encode("utf-16-be", "surrogatepass")


def canonical_json(value: Any) -> str:
    """Keys sorted, no spaces, numbers and strings as JavaScript writes them.

    This is the engine's canonical form, so a hash computed here matches the
    hash the engine computes over the same value: the value as JSON.parse
    would have read it (an integer beyond 2**53 rounded to a double), keys in
    JavaScript's sort order, each scalar as JSON.stringify writes it.
    """
    return _canonical(value, reference=True)


_LITERALS: Final = {None: "null", True: "true", False: "false"}


def _canonical(value: Any, *, reference: bool) -> str:
    if value is None or value is True or value is False:
        return _LITERALS[value]
    if isinstance(value, int):
        return _js_integer(value) if reference else str(value)
    if isinstance(value, float):
        return _js_number(value)
    if isinstance(value, str):
        # What json.dumps(value, ensure_ascii=False) writes, without building
        # an encoder for every string.
        text = _json_string(value)
        # JSON.stringify writes a lone surrogate as its escape (the text then
        # encodes to UTF-8); json.dumps would leave the raw code point.
        return _LONE_SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
    if isinstance(value, Mapping):
        items = sorted(
            ((str(k), v) for k, v in value.items()),
            key=(lambda item: _utf16_order(item[0])) if reference else None,
        )
        return (
            "{"
            + ",".join(
                f"{_canonical(k, reference=reference)}:{_canonical(v, reference=reference)}"
                for k, v in items
            )
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical(item, reference=reference) for item in value) + "]"
    raise TypeError(f"cannot canonicalize {type(value).__name__}")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def operations_intent_hash(operations: Sequence[Operation]) -> str:
    """SHA-256 (hex) of the canonical JSON of the operations, as sent: the fallback
    intent hash of the engine's reference, for a commit without ``intentHash``."""
    wire = [op.model_dump(by_alias=True, exclude_unset=True) for op in operations]
    return _sha256(canonical_json(wire))


def previous_operations_intent_hash(operations: Sequence[Operation]) -> str:
    """The fallback hash connector 0.1.0 computed and stored in ledgers.

    It knew no ``claimId``, wrote an integer beyond 2**53 with every digit and
    ordered keys by code point; for any other commit it equals
    :func:`operations_intent_hash`. A ledger row written then still replays.
    """
    wire = [
        op.model_dump(by_alias=True, exclude_unset=True, exclude={"claim_id"}) for op in operations
    ]
    return _sha256(_canonical(wire, reference=False))
