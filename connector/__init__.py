"""ablo-connector: serve an Ablo Data Source from inside a private network.

The connector dials out to the Ablo engine over one WebSocket
(``ablo.source.v1``), verifies each signed request, and answers it from a
:class:`DataSource` you write (or the SQL adapter, ``connector.adapters.sql``).

What a handler author imports: :class:`DataSource`, :class:`RequestContext`,
:class:`SourceError`, and the request and answer types. What an embedding
program imports: :class:`Config`, :class:`Connector`, and the errors. Every
other module is implementation and may change.
"""

from ._version import __version__
from .daemon.config import Config
from .daemon.signals import run_until_signalled
from .daemon.supervisor import Connector
from .errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectFailure,
    ConnectionLost,
    ConnectorError,
    HandshakeRejected,
    ProtocolError,
    ProtocolMismatch,
    RateLimited,
    SignatureError,
    SourceError,
    Superseded,
)
from .ops.status import ConnectorStatus, State
from .serve.answer import Answer
from .serve.datasource import DataSource, MaybeAwaitable, RequestContext, Row
from .serve.dispatcher import Dispatcher
from .wire.bodies import (
    CommitEcho,
    CommitRequest,
    CommitResult,
    Condition,
    Delta,
    Event,
    EventsPage,
    ListPage,
    ListQuery,
    Operation,
    OperationName,
    Scope,
)
from .wire.signing import VerifiedRequest, Verifier, sign_request, verify_request

__all__ = [
    "Answer",
    "AuthenticationFailed",
    "CommitEcho",
    "CommitRequest",
    "CommitResult",
    "Condition",
    "Config",
    "ConfigError",
    "ConnectFailure",
    "ConnectionLost",
    "Connector",
    "ConnectorError",
    "ConnectorStatus",
    "DataSource",
    "Delta",
    "Dispatcher",
    "Event",
    "EventsPage",
    "HandshakeRejected",
    "ListPage",
    "ListQuery",
    "MaybeAwaitable",
    "Operation",
    "OperationName",
    "ProtocolError",
    "ProtocolMismatch",
    "RateLimited",
    "RequestContext",
    "Row",
    "Scope",
    "SignatureError",
    "SourceError",
    "State",
    "Superseded",
    "VerifiedRequest",
    "Verifier",
    "__version__",
    "run_until_signalled",
    "sign_request",
    "verify_request",
]
