"""The ledger and the outbox as every adapter answers from them.

The tables are the engine's (``ablo_idempotency``, ``ablo_outbox``); each
adapter reads and writes them in its own terms, and answers the same: the
events cursor a source issues, an event as the engine receives it, and what
a commit sent again under a ledger row's ``correlationId`` gets back.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ...errors import SourceError
from ...wire.bodies import CommitRequest

__all__ = [
    "LEDGER_RETENTION",
    "OUTBOX_COLUMNS",
    "change_event",
    "event_answer",
    "operation_event",
    "outbox_cursor",
    "replayed_answer",
]

#: How long a commit's ledger row answers its replays.
LEDGER_RETENTION: Final = dt.timedelta(days=30)

#: The outbox's columns, in the order its table declares them.
OUTBOX_COLUMNS: Final = (
    "cursor",
    "id",
    "model",
    "entity_id",
    "type",
    "data",
    "organization_id",
    "client_tx_id",
    "correlation_id",
    "transaction_id",
    "occurred_at",
    "created_at",
)

_MAX_CURSOR: Final = (1 << 63) - 1


def outbox_cursor(cursor: str | None) -> int:
    """The outbox position an ``events`` cursor names (0: from the start)."""
    if cursor is None or cursor == "":
        return 0
    if (
        not cursor.isascii()
        or not cursor.isdigit()
        or len(cursor) > 19
        or int(cursor) > _MAX_CURSOR
    ):
        raise SourceError(
            "source_cursor_invalid", "the events cursor must be a cursor this source issued"
        )
    return int(cursor)


def operation_event(
    commit: CommitRequest, index: int, model: str, row: Mapping[str, Any]
) -> dict[str, Any]:
    """The outbox row of the commit's operation ``index`` on ``model``, which
    left ``row`` (a DELETE: the row as it was). Its id keeps the operation's
    index, so it is the same on a replay."""
    op = commit.operations[index]
    return change_event(
        commit, f"{commit.correlation_id}:{index}", model, row, op.type, op.transaction_id
    )


def change_event(
    commit: CommitRequest,
    event_id: str,
    model: str,
    row: Mapping[str, Any],
    kind: str,
    transaction_id: str | None = None,
) -> dict[str, Any]:
    """The outbox row of a change ``commit`` made to ``row`` of ``model``
    (``kind``: CREATE, UPDATE, DELETE, …; a DELETE's ``row`` is the row as it
    was, and its data is null)."""
    return {
        "id": event_id,
        "model": model,
        "entity_id": str(row.get("id", "")),
        "type": kind,
        "data": None if kind == "DELETE" else row,
        "organization_id": commit.scope.organization_id if commit.scope else None,
        "client_tx_id": None,
        "correlation_id": commit.correlation_id,
        "transaction_id": transaction_id,
        "occurred_at": time.time_ns() // 1_000_000,
    }


def event_answer(row: Mapping[Any, Any]) -> dict[str, Any]:
    """One outbox row (by column name) as the event the engine receives."""
    event = {
        "id": row["id"],
        "model": row["model"],
        "entityId": row["entity_id"],
        "type": row["type"],
        "data": row["data"],
        "organizationId": row["organization_id"],
        "clientTxId": row["client_tx_id"],
        "correlationId": row["correlation_id"],
        "transactionId": row["transaction_id"],
        "occurredAt": row["occurred_at"],
        "cursor": str(row["cursor"]),
    }
    return {key: value for key, value in event.items() if value is not None}


def replayed_answer(
    found: tuple[str | None, Any, bool] | None, intents: Sequence[str]
) -> Sequence[Any]:
    """The stored answer of a commit sent again: ``found`` is its ledger row
    (``request_hash``, ``response``, whether it has expired), or ``None``
    when the row that made this commit wait was rolled back."""
    if found is None:  # reserved, then rolled back between our two statements
        raise SourceError(
            "source_commit_retry", "a concurrent commit with this correlationId rolled back; retry",
            status=503,
        )  # fmt: skip
    request_hash, response, expired = found
    if request_hash not in intents:
        raise SourceError(
            "idempotency_conflict",
            "this correlationId was already used with a different intent"
            if request_hash is not None
            else "this correlationId predates intent hashing and cannot be replayed safely",
            status=409,
        )
    if expired:
        raise SourceError(
            "idempotency_key_expired",
            "this correlationId has expired and cannot be executed again safely",
            status=409,
        )
    if not isinstance(response, list):
        raise SourceError(
            "idempotency_conflict", "the stored answer for this correlationId is corrupt",
            status=409,
        )  # fmt: skip
    return response
