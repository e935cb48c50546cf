"""What does a handler author write? The :class:`DataSource` API.

Subclass :class:`DataSource` and override the operations you serve. Each
method may be ``async def`` or plain ``def`` (a plain one runs in a worker
thread, so blocking drivers never stall the connection), which is why every
return type is a :data:`MaybeAwaitable`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias, TypeVar

from ..wire.bodies import (
    CommitRequest,
    CommitResult,
    Event,
    EventsPage,
    ListPage,
    ListQuery,
    OperationName,
    Scope,
    SourceRequest,
)
from .models import DeclaredModels, ModelNames

__all__ = ["DataSource", "MaybeAwaitable", "RequestContext", "Row"]

_T = TypeVar("_T")

#: A handler's return value: the value itself (plain ``def``), or an awaitable
#: of it (``async def``, or a plain ``def`` that returns a coroutine).
MaybeAwaitable: TypeAlias = _T | Awaitable[_T]

#: One row as a handler returns it: a mapping of field name to JSON-ready
#: value (``datetime``, ``Decimal``, ``UUID``, dataclasses and pydantic
#: models are serialized for you).
Row: TypeAlias = Mapping[str, Any]


class RequestContext(NamedTuple):
    """What a handler knows about the request it serves (read-only).

    ``message_id`` (the ``webhook-id``) and ``signed_at`` are vouched for by
    the signature; ``scope`` is the engine's advisory context; ``auth`` is
    whatever :meth:`DataSource.authorize` returned; ``request_id`` is the
    frame's correlation id, for logs. (A named tuple: one is built per
    request, and a frozen dataclass cost four times as much to build.)
    """

    operation: OperationName
    message_id: str
    signed_at: int
    headers: Mapping[str, str]
    request: SourceRequest
    scope: Scope | None = None
    auth: Any = None
    request_id: str | None = None


class DataSource:
    """Subclass and override any of ``load``, ``list``, ``commit``, ``events``.

    An operation that is not overridden answers 404
    ``source_<operation>_not_configured``. Raise
    :class:`~connector.SourceError` to answer with a specific status; any
    other exception answers 500 ``source_connector_handler_error``.

    Optionally declare the models it serves in :attr:`model_names`: the
    dispatcher then resolves the names the engine's clients send (the
    declared name, the typename, either in lowercase) to the declared name
    before any method runs, and answers 400 ``source_unknown_model`` for
    any other name.
    """

    #: The models this source serves: their names (``("task", "workItems")``),
    #: or each name with its typename (``{"workItems": "WorkItem"}``). ``None``
    #: (the default): names reach the methods as the engine sent them.
    model_names: DeclaredModels | None = None

    def served_models(self) -> MaybeAwaitable[DeclaredModels | ModelNames | None]:
        """The models to resolve request names against; by default :attr:`model_names`.

        Override it when the models are known only at run time (the SQL
        adapter reflects them from the database). It is called for every
        request, on the event loop (a plain ``def`` too), so it must be cheap
        and return the same object until the models change: a new object is
        checked (and refused if two models share an alias) before it is used.
        """
        return self.model_names

    def load(self, model: str, id: str, ctx: RequestContext) -> MaybeAwaitable[Row | None]:
        """Return the row with ``id`` (a mapping), or ``None`` if absent."""
        raise NotImplementedError

    def list(
        self, model: str, query: ListQuery, ctx: RequestContext
    ) -> MaybeAwaitable[ListPage | Sequence[Row]]:
        """Return a :class:`ListPage` (with ``next_cursor`` when more remain), or a list of rows."""
        raise NotImplementedError

    def commit(
        self, commit: CommitRequest, ctx: RequestContext
    ) -> MaybeAwaitable[CommitResult | Mapping[str, Any] | None]:
        """Apply every operation atomically; idempotent on ``commit.correlation_id``.

        Return a :class:`CommitResult` (or a mapping with ``rows``/``deltas``).
        """
        raise NotImplementedError

    def events(
        self, cursor: str | None, limit: int | None, ctx: RequestContext
    ) -> MaybeAwaitable[EventsPage | Sequence[Event | Row]]:
        """Return an :class:`EventsPage` of changes after ``cursor`` (at most ``limit``)."""
        raise NotImplementedError

    def authorize(self, ctx: RequestContext) -> MaybeAwaitable[Any]:
        """Optional: attach business context (the returned value becomes ``ctx.auth``).

        Raise :class:`~connector.SourceError` (e.g. ``status=403``) to refuse the request.
        """
        return None

    def scopes(self, ctx: RequestContext) -> MaybeAwaitable[Iterable[str] | None]:
        """Optional: the operations this request may use (``None`` = all)."""
        return None

    def probe(self) -> MaybeAwaitable[None]:
        """Optional: check that the source can serve now (its database answers, say).

        When a subclass defines it, the daemon calls it every few seconds
        (``probe_interval``), never concurrently with itself, and shows the
        outcome on ``/readyz`` (503 while it fails) and as
        ``ablo_connector_source_up``. Return to say it can serve; raise to
        say why not: a :class:`~connector.SourceError`'s ``code`` names the
        reason (``database_unreachable``) and its message the detail. It must
        be cheap (``SELECT 1``) and finish well within a few seconds.
        """
        return None


def overridden(source: DataSource, name: str) -> bool:
    """Whether ``source``'s class defines its own ``name`` (else the base's default)."""
    return getattr(type(source), name, None) is not getattr(DataSource, name)
