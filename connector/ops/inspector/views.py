"""What the inspector shows of an entry: the JSON its page and scripts read.

Everything here runs when a page or a script asks, never on the request
path. Nothing secret leaves: signature values and any header that may hold
a credential are shortened, and the inspector's ``redact`` (the API key,
database passwords, the inspector's token) runs over every answer it gives.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from typing import Any, Final

from .recorder import Entry

__all__ = [
    "SIGNATURE_FAILURES",
    "command_for",
    "detail",
    "shown_headers",
    "signature_error",
    "summary",
]

#: The codes a request's verification answers with (docs/protocol.md §4), and
#: the one for a connector that holds no key.
SIGNATURE_FAILURES: Final = frozenset(
    {
        "source_id_missing",
        "source_timestamp_missing",
        "source_timestamp_invalid",
        "source_timestamp_expired",
        "source_signature_missing",
        "source_signature_invalid",
        "source_api_key_missing",
    }
)
# Refused before verification ran: no verdict to show.
_NOT_VERIFIED: Final = frozenset({"method_not_allowed", "source_connector_draining"})
# Header names whose values may be credentials (or are signatures): shown shortened.
_SENSITIVE_HEADER = re.compile(r"signature|authorization|cookie|token|secret|key|password", re.I)
_SHOWN_PREFIX: Final = 8
_TIMEOUT_CODE: Final = "source_connector_timeout"


def signature_error(entry: Entry) -> str | None:
    """The code verification refused the request with, or None."""
    if entry.status == 401 and entry.operation is None and entry.error in SIGNATURE_FAILURES:
        return entry.error
    return None


def verified(entry: Entry) -> bool | None:
    """True once the signature was verified, False if refused, None if never checked."""
    if signature_error(entry) is not None:
        return False
    if entry.operation is None and entry.error in _NOT_VERIFIED:
        return None
    return True


def _shorten(value: str) -> str:
    """The first characters of each space-separated part: enough to tell two apart."""
    parts = []
    for part in value.split():
        scheme, comma, rest = part.partition(",")
        if comma and len(scheme) <= 4:  # v1,<base64>: keep the scheme
            parts.append(f"{scheme},{rest[:_SHOWN_PREFIX]}…")
        else:
            parts.append(f"{part[: _SHOWN_PREFIX // 2]}…")
    return " ".join(parts)


def shown_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {
        name: _shorten(value) if _SENSITIVE_HEADER.search(name) else value
        for name, value in headers
    }


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _is_json(text: str) -> bool:
    """Whether ``text`` parses as JSON (``null`` does: :func:`_parsed` cannot tell it apart)."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _condition(condition: Any) -> str:
    if isinstance(condition, list):
        if len(condition) == 2:
            return f"{condition[0]} = {_scalar(condition[1])}"
        if len(condition) == 3:
            return f"{condition[0]} {condition[1]} {_scalar(condition[2])}"
    if isinstance(condition, dict):
        return (
            f"{condition.get('field')} {condition.get('op', '=')} {_scalar(condition.get('value'))}"
        )
    return json.dumps(condition)


def describe_body(body: Any) -> tuple[str | None, str | None, str]:
    """What a request body asks: its operation and model, and a one-line summary
    (the row id, the query, the operations, the cursor)."""
    if not isinstance(body, dict):
        return None, None, ""
    kind = body.get("type") if isinstance(body.get("type"), str) else None
    model = body.get("model") if isinstance(body.get("model"), str) else None
    if kind == "load":
        return kind, model, _scalar(body.get("id"))
    if kind == "list":
        query: dict[str, Any] = body["query"] if isinstance(body.get("query"), dict) else {}
        parts = []
        where = query.get("where")
        if isinstance(where, list) and where:
            parts.append(", ".join(_condition(c) for c in where))
        if query.get("orderBy"):
            parts.append(f"order by {query['orderBy']} {query.get('order') or 'asc'}")
        if query.get("limit") is not None:
            parts.append(f"limit {query['limit']}")
        if query.get("cursor"):
            parts.append("after a cursor")
        return kind, model, " · ".join(parts) or "all rows"
    if kind == "commit":
        operations = body.get("operations")
        if not isinstance(operations, list):
            return kind, model, ""
        shown = []
        for operation in operations[:3]:
            if isinstance(operation, dict):
                shown.append(
                    f"{operation.get('type')} {operation.get('model')} {operation.get('id')}"
                )
        more = f" +{len(operations) - 3} more" if len(operations) > 3 else ""
        if model is None and operations and isinstance(operations[0], dict):
            first = operations[0].get("model")
            model = first if isinstance(first, str) else None
        return kind, model, ", ".join(shown) + more
    if kind == "events":
        parts = ["after a cursor" if body.get("cursor") else "from the start"]
        if body.get("limit") is not None:
            parts.append(f"limit {body['limit']}")
        return kind, model, " · ".join(parts)
    return kind, model, ""


def _described(entry: Entry) -> tuple[str | None, str | None, str]:
    body = None if entry.request_truncated else _parsed(entry.request_body)
    return describe_body(body)


def summary(entry: Entry) -> dict[str, Any]:
    """One row: what the list and the page's table show."""
    claimed_operation, claimed_model, what = _described(entry)
    error = signature_error(entry)
    return {
        "id": entry.id,
        "seq": entry.number,
        "time": round(entry.started_at, 3),
        # What the dispatcher resolved; for a request it never read (a bad
        # signature), what its body says.
        "operation": entry.operation or claimed_operation,
        "model": entry.model or claimed_model,
        "summary": what,
        "status": entry.status,
        "error": entry.error,
        "durationMs": round(entry.seconds * 1000, 3),
        "verified": verified(entry),
        "signatureError": error,
        "replayed": entry.replayed,
        "deadlineHit": entry.error == _TIMEOUT_CODE,
        "replayOf": entry.replay_of,
    }


def _body(text: str, size: int | None) -> dict[str, Any]:
    whole = size is None
    return {
        "body": text,
        "size": len(text.encode("utf-8", "surrogatepass")) if whole else size,
        "truncated": not whole,
    }


def detail(entry: Entry, *, engine: str | None = None) -> dict[str, Any]:
    """The row, plus the request and the answer as they were, and the request's log lines."""
    return {
        **summary(entry),
        "request": {
            "method": entry.method,
            "url": entry.url,
            "headers": shown_headers(entry.header_pairs),
            **_body(entry.request_body, entry.request_size),
        },
        "answer": {
            "status": entry.status,
            "headers": {"content-type": "application/json"},
            **_body(entry.answer_body, entry.answer_size),
        },
        "logs": list(entry.lines or ()),
        "command": None if entry.request_truncated else command_for(entry.request_body, engine),
    }


# ------------------------------------------------------------ copy as command

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_SYMBOLS: Final = frozenset({"=", "!=", "<", "<=", ">", ">="})
_WORDS: Final = frozenset(
    {"IN", "NOT IN", "IS", "IS NOT", "LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"}
)
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_%@:/.\-]+")
_COMMIT_TYPES: Final = frozenset({"CREATE", "UPDATE", "DELETE", "ARCHIVE", "UNARCHIVE"})


def _value_text(value: Any) -> str:
    """VALUE as ``request list --where`` reads it back: JSON when it parses, else text."""
    if isinstance(value, str) and _PLAIN_TEXT.fullmatch(value) and not _is_json(value):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _where_argument(condition: Any) -> str:
    """One ``--where``: FIELD OP VALUE when that reads back the same, else the JSON condition."""
    if isinstance(condition, list) and len(condition) in (2, 3):
        field = condition[0]
        op = "=" if len(condition) == 2 else condition[1]
        value = condition[-1]
        if isinstance(field, str) and _FIELD.fullmatch(field) and isinstance(op, str):
            text = _value_text(value)
            if op in _SYMBOLS and not (op == "=" and len(condition) == 3):
                if not any(c.isspace() for c in text):  # else a word operator may be read in it
                    return f"{field}{op}{text}"
            elif op in _WORDS:
                return f"{field} {op} {text}"
    return json.dumps(condition, ensure_ascii=False, separators=(",", ":"))


def _short_form(body: dict[str, Any]) -> list[str] | None:
    """``request load|list|commit|events`` arguments that send exactly ``body``, or None."""
    kind = body.get("type")
    keys = set(body)
    if kind == "load" and keys == {"type", "model", "id"}:
        model, id = body["model"], body["id"]
        if _positional(model, id):
            return ["load", model, id]
    if kind == "list" and keys == {"type", "model", "query"}:
        model, query = body["model"], body["query"]
        if not (_positional(model) and isinstance(query, dict)):
            return None
        if not set(query) <= {"where", "limit", "orderBy", "order", "cursor"}:
            return None
        args = ["list", model]
        where = query.get("where", [None])
        if "where" in query:
            if not isinstance(where, list) or not where:
                return None
            for condition in where:
                args += ["--where", _where_argument(condition)]
        if "limit" in query:
            limit = query["limit"]
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                return None
            args += ["--limit", str(limit)]
        if ("orderBy" in query) != ("order" in query):
            return None
        if "orderBy" in query:
            order_by, order = query["orderBy"], query["order"]
            if not (isinstance(order_by, str) and order_by and order in ("asc", "desc")):
                return None
            args += ["--order-by", order_by] + (["--desc"] if order == "desc" else [])
        if "cursor" in query:
            cursor = query["cursor"]
            if not (isinstance(cursor, str) and cursor):
                return None
            args += ["--cursor", cursor]
        return args
    if kind == "commit" and keys == {"type", "operations", "correlationId"}:
        operations, correlation_id = body["operations"], body["correlationId"]
        if not (isinstance(operations, list) and len(operations) == 1):
            return None
        operation = operations[0]
        if not (isinstance(operation, dict) and set(operation) == {"type", "model", "id", "input"}):
            return None
        if not (
            operation["type"] in _COMMIT_TYPES
            and _positional(operation["model"], operation["id"])
            and isinstance(operation["input"], dict)
            and isinstance(correlation_id, str)
            and correlation_id
        ):
            return None
        data = json.dumps(operation["input"], ensure_ascii=False, separators=(",", ":"))
        return [
            "commit", operation["type"].lower(), operation["model"], operation["id"], data,
            "--correlation-id", correlation_id,
        ]  # fmt: skip
    if kind == "events" and keys <= {"type", "cursor", "limit"}:
        args = ["events"]
        if "cursor" in body:
            if not (isinstance(body["cursor"], str) and body["cursor"]):
                return None
            args += ["--cursor", body["cursor"]]
        if "limit" in body:
            limit = body["limit"]
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                return None
            args += ["--limit", str(limit)]
        return args
    return None


def _positional(*values: Any) -> bool:
    """Whether each value can be a positional argument: text that click would not
    take for an option."""
    return all(isinstance(v, str) and v and not v.startswith("-") for v in values)


def command_for(body_text: str, engine: str | None = None) -> str | None:
    """The ``ablo-connector request …`` line that sends this body to ``dev``'s
    engine (``engine``: its control API, when not the default); None for a
    body that is not a JSON object."""
    body = _parsed(body_text)
    if not isinstance(body, dict):
        return None
    args = _short_form(body)
    if args is None:
        args = ["raw", json.dumps(body, ensure_ascii=False, separators=(",", ":"))]
    if engine is not None:
        args += ["--engine", engine]
    return " ".join(["ablo-connector", "request", *(shlex.quote(a) for a in args)])
