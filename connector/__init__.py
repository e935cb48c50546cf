"""ablo-connector: serve an Ablo Data Source from inside a private network.

The connector dials out to the Ablo engine over one WebSocket
(``ablo.source.v1``), verifies each signed request, and answers it from a
:class:`DataSource` you write (or the SQL adapter).
"""

from ._version import __version__
from .handler import DataSource, Dispatcher, HttpResponse, RequestContext, SourceError
from .protocol import ProtocolError
from .signing import SignatureError, VerifiedRequest, sign_request, verify_request
from .source import (
    CommitRequest,
    CommitResult,
    Delta,
    Event,
    EventsPage,
    ListPage,
    ListQuery,
    Operation,
    Scope,
)

__all__ = [
    "CommitRequest",
    "CommitResult",
    "DataSource",
    "Delta",
    "Dispatcher",
    "Event",
    "EventsPage",
    "HttpResponse",
    "ListPage",
    "ListQuery",
    "Operation",
    "ProtocolError",
    "RequestContext",
    "Scope",
    "SignatureError",
    "SourceError",
    "VerifiedRequest",
    "__version__",
    "sign_request",
    "verify_request",
]
