"""ablo-connector: serve an Ablo Data Source from inside a private network.

The connector dials out to the Ablo engine over one WebSocket
(``ablo.source.v1``), verifies each signed request, and answers it from a
:class:`DataSource` you write (or the SQL adapter, ``connector.adapters.sql``).

What a handler author imports: :class:`DataSource`, :class:`RequestContext`,
:class:`SourceError`, and the request and answer types. What an embedding
program imports: :class:`Config`, :class:`Connector`, and the errors. Every
other module is implementation and may change.

The names below load on first use (PEP 562), so that ``import connector``
costs next to nothing: the command's first lines run before the rest of
the package is imported (see :mod:`connector._launch`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
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
    from .ops.status import (
        ConnectorStatus,
        State,
    )
    from .serve.answer import Answer
    from .serve.datasource import (
        DataSource,
        MaybeAwaitable,
        RequestContext,
        Row,
    )
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
    from .wire.signing import (
        VerifiedRequest,
        Verifier,
        sign_request,
        verify_request,
    )

# Where each public name lives.
_EXPORTS: dict[str, str] = {
    "Config": ".daemon.config",
    "run_until_signalled": ".daemon.signals",
    "Connector": ".daemon.supervisor",
    "AuthenticationFailed": ".errors",
    "ConfigError": ".errors",
    "ConnectFailure": ".errors",
    "ConnectionLost": ".errors",
    "ConnectorError": ".errors",
    "HandshakeRejected": ".errors",
    "ProtocolError": ".errors",
    "ProtocolMismatch": ".errors",
    "RateLimited": ".errors",
    "SignatureError": ".errors",
    "SourceError": ".errors",
    "Superseded": ".errors",
    "ConnectorStatus": ".ops.status",
    "State": ".ops.status",
    "Answer": ".serve.answer",
    "DataSource": ".serve.datasource",
    "MaybeAwaitable": ".serve.datasource",
    "RequestContext": ".serve.datasource",
    "Row": ".serve.datasource",
    "Dispatcher": ".serve.dispatcher",
    "CommitEcho": ".wire.bodies",
    "CommitRequest": ".wire.bodies",
    "CommitResult": ".wire.bodies",
    "Condition": ".wire.bodies",
    "Delta": ".wire.bodies",
    "Event": ".wire.bodies",
    "EventsPage": ".wire.bodies",
    "ListPage": ".wire.bodies",
    "ListQuery": ".wire.bodies",
    "Operation": ".wire.bodies",
    "OperationName": ".wire.bodies",
    "Scope": ".wire.bodies",
    "VerifiedRequest": ".wire.signing",
    "Verifier": ".wire.signing",
    "sign_request": ".wire.signing",
    "verify_request": ".wire.signing",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
