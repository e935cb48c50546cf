"""What does the engine learn of a failure, and what does the operator's log keep?

A handler's exception answers 500 ``source_connector_handler_error`` with a
generic message and a ``reference``; the local ERROR line carries the same
reference, the traceback and the request's fields. Exception text can hold
ids, row values or hostnames, and it stays inside the network unless the
operator turns on detailed errors (development). A request that runs out
of time (504) is logged at WARNING with the same fields.
"""

from __future__ import annotations

import logging
import secrets

from .answer import Answer, error_answer
from .datasource import RequestContext

__all__ = ["HANDLER_ERROR", "handler_failed", "timed_out_logged"]

log = logging.getLogger("connector.dispatcher")

HANDLER_ERROR = "source_connector_handler_error"


def handler_failed(
    error: BaseException,
    ctx: RequestContext,
    model: str | None,
    seconds: float,
    detail: str | None = None,
) -> Answer:
    """The 500 for ``error``, logged with a new reference; ``detail`` (if given) is sent."""
    reference = secrets.token_hex(6)
    log.error(
        "handler raised while serving %s %s (request %s, reference %s)",
        ctx.operation, model or "-", ctx.request_id or "-", reference,
        exc_info=error,
        extra={
            "request_id": ctx.request_id, "message_id": ctx.message_id,
            "operation": ctx.operation, "model": model, "status": 500,
            "error_code": HANDLER_ERROR, "duration_ms": round(seconds * 1000, 1),
            "reference": reference,
        },
    )  # fmt: skip
    message = detail or (
        f"the handler failed; the connector's log has the detail under reference {reference}"
    )
    return error_answer(
        500, HANDLER_ERROR, message, operation=ctx.operation, model=model,
        fields={"reference": reference},
    )  # fmt: skip


def timed_out_logged(
    answer: Answer, request_id: str | None, message_id: str, seconds: float
) -> Answer:
    """``answer`` (a 504), logged at WARNING: a timeout is a problem to see at INFO."""
    log.warning(
        "request %s %s %s timed out: %d %s after %.1f s",
        request_id or "-", answer.operation or "-", answer.model or "-", answer.status,
        answer.error, seconds,
        extra={
            "request_id": request_id, "message_id": message_id, "operation": answer.operation,
            "model": answer.model, "status": answer.status, "error_code": answer.error,
            "duration_ms": round(seconds * 1000, 1),
        },
    )  # fmt: skip
    return answer
