"""Why could the socket not be opened? One short reason per failure.

The reason becomes the :class:`~connector.errors.ConnectionLost`'s ``code``,
which ``/readyz`` shows as ``lastError`` and the logs carry as
``error_code``: an operator (or an alert rule) tells a DNS outage from a
firewall from a TLS-intercepting proxy without reading the message.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from typing import Final

from websockets.exceptions import InvalidHandshake, InvalidProxy, ProxyError

__all__ = ["REASONS", "failure_reason"]

#: Every reason :func:`failure_reason` gives, for the README and the tests.
REASONS: Final = (
    "dns", "refused", "unreachable", "reset", "timeout", "tls", "proxy", "handshake",
    "connection_lost",
)  # fmt: skip

_BY_ERRNO: Final = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.ECONNABORTED: "reset",
    errno.EPIPE: "reset",
    errno.ENETUNREACH: "unreachable",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETDOWN: "unreachable",
    errno.EHOSTDOWN: "unreachable",
    errno.EADDRNOTAVAIL: "unreachable",
    errno.ETIMEDOUT: "timeout",
}
# asyncio joins the failures of several addresses (IPv6 and IPv4 of one
# name) into one OSError without an errno; its text keeps each "[Errno N]".
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]")


def failure_reason(error: BaseException) -> str:
    """The short reason for an error raised while opening the WebSocket."""
    if isinstance(error, socket.gaierror):
        return "dns"
    if isinstance(error, ssl.SSLError):
        return "tls"
    if isinstance(error, ProxyError | InvalidProxy):
        return "proxy"
    if isinstance(error, InvalidHandshake):
        return "handshake"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, OSError):
        code = error.errno
        if code is None:
            found = _ERRNO_IN_TEXT.search(str(error))
            code = int(found.group(1)) if found else None
        if code in _BY_ERRNO:
            return _BY_ERRNO[code]
    return "connection_lost"
