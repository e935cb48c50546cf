"""What does a database failure answer? The caller's mistake, a conflict, or retry later.

The flow is the same on every database; which failure is which is read from
the dialect's own table (SQLSTATE classes, messages, error numbers). No
answer carries SQL text or a bound value: the dialect words the answer from
what the error names (a column, a constraint), and the database's full
message stays in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from sqlalchemy import exc as sa_exc

from ...errors import SourceError, describe_error
from .dialects import Dialect, registered
from .drift import SCHEMA_CHANGED, SchemaChanged
from .models import ServedModel

__all__ = ["answers", "describe_database_error", "refusal", "refused_as"]

log = logging.getLogger("connector.sql")

_UNAVAILABLE: Final = "the database is unavailable; retry"
_UNSENDABLE: Final = "a value cannot be sent to the database (e.g. a NUL character in text)"


@contextmanager
def answers(dialect: Dialect, *models: ServedModel) -> Iterator[None]:
    """Database failures as answers (the field of ``models`` whose value was
    refused is named where the database says which)."""
    try:
        yield
    except SourceError:
        raise
    except sa_exc.StatementError as error:
        if isinstance(error, sa_exc.DBAPIError):
            raise refusal(dialect, error, models) from None
        # A value the driver could not bind (e.g. an integer past 64 bits).
        log.warning("a value could not be bound: %s", type(error.orig).__name__)
        raise SourceError(
            "source_value_invalid", "a value does not fit its column's type"
        ) from None
    except sa_exc.TimeoutError as error:
        # Every pooled connection stayed busy: the database is slow or the
        # pool too small for the load, not this request's fault.
        log.warning("no database connection became free: %s", error)
        raise SourceError(
            "source_database_unavailable",
            "every database connection stayed busy; retry the request",
            status=503,
        ) from None
    except sa_exc.SQLAlchemyError as error:
        log.error("the SQL adapter failed: %s", type(error).__name__, exc_info=True)
        raise SourceError(
            "source_adapter_error", "the SQL adapter failed this request", status=500
        ) from None


def refused_as(dialect: Dialect, error: sa_exc.DBAPIError) -> str:
    """The error code the request gets for ``error`` (without logging it)."""
    original = error.orig
    if dialect.timed_out(original):
        return "source_database_timeout"
    if dialect.schema_changed(original):
        return SCHEMA_CHANGED
    caller = dialect.caller_mistake(original)
    if caller is not None:
        return caller[0]
    if isinstance(error, sa_exc.DataError):
        return "source_value_invalid"
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return "source_database_unavailable"
    return "source_database_error"


def refusal(
    dialect: Dialect, error: sa_exc.DBAPIError, models: Sequence[ServedModel] = ()
) -> SourceError:
    """The answer to a statement the database refused, logged once."""
    original = error.orig
    if dialect.timed_out(original):
        return SourceError(
            "source_database_timeout",
            "the database cancelled a statement that ran past its statement timeout",
            status=504,
        )
    if dialect.schema_changed(original):
        # Each request's own line is DEBUG: the reflection that follows logs
        # what changed, once per model.
        log.debug("a served table changed: %s", describe_database_error(error))
        return SchemaChanged("a table this source serves changed while the request ran; retry")
    caller = dialect.caller_mistake(original)
    if caller is not None:
        log.info("the database refused a request: %s", describe_database_error(error))
        code, status = caller
        message, field = dialect.refusal_message(error, models)
        if field is None:
            return SourceError(code, message, status=status)
        return SourceError(code, message, status=status, field=field)
    if isinstance(error, sa_exc.DataError):
        # Refused by the driver before it reached the server: a value it
        # cannot send, such as a NUL character in text.
        log.info("the driver refused a value: %s", describe_database_error(error))
        return SourceError("source_value_invalid", _UNSENDABLE, status=400)
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        log.warning("database unavailable: %s", describe_database_error(error))
        return SourceError("source_database_unavailable", _UNAVAILABLE, status=503)
    log.error("database error: %s", describe_database_error(error))
    return SourceError("source_database_error", "the database failed this request", status=500)


def describe_database_error(error: Exception) -> str:
    """The database's own one-line reason, for the operator's log and checks
    (never the SQL; it may quote a rejected value, so answers never carry it)."""
    original = getattr(error, "orig", None)
    if original is not None:
        for dialect in registered().values():
            described = dialect.describe(original)
            if described:
                return described
    return describe_error(original if original is not None else error)
