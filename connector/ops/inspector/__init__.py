"""What did the engine send, and what did the handler answer? A local page, live.

``--inspect [HOST:]PORT`` (on by default in ``dev``) serves a page that
shows the recent requests as they happen, each with its headers, bodies,
answer, signature verdict and log lines, and can send one through the
handler again, as it was or edited. The page and the JSON API behind it are
served by :class:`~.server.Inspector`, which is also one of the connector's
observers: it records each answered request in a bounded
:class:`~.recorder.Recorder`, and pushes it to open pages as server-sent
events. With no page open, recording is all it does on the request path.
"""

from __future__ import annotations

from .server import Inspector, ReplayRefused

__all__ = ["Inspector", "ReplayRefused"]
