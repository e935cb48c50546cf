"""The inspector's page and JSON API, and the observer that records each request.

Routes (JSON unless said otherwise; the names are kept stable for scripts):

- ``GET /``: the page (``inspector.js`` and ``inspector.css`` beside it; nothing
  from the internet);
- ``GET /api/requests``: the kept requests, newest first (``?operation=``,
  ``?model=``, ``?status=`` filter: ``404``, or a class such as ``4xx``);
- ``GET /api/requests/{id}``: one of them with its request, answer and log lines;
- ``POST /api/requests/{id}/replay``: run it through the handler again, as it
  was or with ``{"body": …}``; a commit needs ``{"confirmWrite": true}``;
- ``GET /api/state``: the connection's state and the inspector's own;
- ``GET /api/events``: server-sent events, ``request`` (a new row) and
  ``state``, pushed as they happen.

Access. On loopback (the default) it answers only requests whose ``Host`` is
a loopback name, so a web page elsewhere cannot reach it through DNS
rebinding, and a ``POST`` must be ``application/json`` from no other origin,
which a cross-site form cannot send. Beyond loopback every request needs the
token: ``Authorization: Bearer …``, or the cookie the page gets by opening
``/?token=…`` once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any, Final
from urllib.parse import unquote

from ... import _http
from ...wire import strict_json
from ...wire.bodies import parse_source_request, parse_source_request_fast
from ...wire.frames import RequestFrame
from ..health import parse_address
from ..logs import installed_formatter
from ..status import AnsweredRequest, ConnectorStatus, Observer
from .recorder import Entry, LogCapture, Recorder, capturing_lines, current_lines
from .views import detail, summary

__all__ = ["Inspector", "Replay", "ReplayRefused"]

log = logging.getLogger("connector.inspector")

#: Runs a body through the handler as a new delivery with this request id;
#: returns the headers it was signed with and the answer.
Replay = Callable[[str, str], Awaitable[tuple[Mapping[str, str], AnsweredRequest]]]

_COOKIE: Final = "ablo_inspector"
_PAGE_FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/inspector.js": ("inspector.js", "text/javascript; charset=utf-8"),
    "/inspector.css": ("inspector.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}
# An open page that falls this far behind is dropped; its browser reconnects and reloads.
_MAX_BACKLOG: Final = 1000
_READ_ONLY_OPERATIONS: Final = frozenset({"load", "list", "events"})


class ReplayRefused(Exception):
    """The connector cannot replay now (it is stopping); the message says why."""


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _is_loopback_name(host: str) -> bool:
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:4040
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def may_write(body: str) -> bool:
    """Whether running ``body`` may write: whether the dispatcher would read it
    as a request other than a load, list or events.

    It is read here as the dispatcher reads it (the same parsers, in the same
    order), so a body the dispatcher refuses before any handler runs (not
    JSON, an unknown ``type``, a field of the wrong kind) is no write, and a
    body it would serve is classed by the very ``type`` it would serve.
    """
    request = parse_source_request_fast(body)
    if request is None:
        try:
            request = parse_source_request(strict_json.loads(body))
        except (ValueError, RecursionError):  # ValidationError is a ValueError
            return False
    return request.type not in _READ_ONLY_OPERATIONS


class Inspector(Observer):
    """Records the requests the connector answers, and serves them to a local page."""

    def __init__(
        self,
        status: ConnectorStatus,
        address: str,
        *,
        token: str | None = None,
        max_requests: int = 500,
        max_bytes: int = 8 * 1024 * 1024,
        max_body: int = 16 * 1024 * 1024,
        replay: Replay | None = None,
        redact: Callable[[str], str] = lambda text: text,
        port_fallback: int = 0,
    ) -> None:
        self.recorder = Recorder(max_requests, max_bytes)
        self._status = status
        self._host, self._port = parse_address(address)
        self._token = token
        self._replay = replay
        self._redact = redact
        self._max_body = max_body
        self._port_fallback = port_fallback
        #: The dev engine's control API, for "copy as command" (None: the default).
        self.engine_api: str | None = None
        self._server: asyncio.Server | None = None
        self._capture: LogCapture | None = None
        self._pages: set[asyncio.Queue[tuple[str, Any] | None]] = set()
        self._replaying = False
        self._replays = itertools.count(1)
        self._files: dict[str, bytes] = {}
        status.subscribe(self._on_status)

    def __repr__(self) -> str:
        return f"Inspector(url={self.url!r}, kept={len(self.recorder)})"

    @property
    def url(self) -> str | None:
        """Where the page is, once listening."""
        if self._server is None:
            return None
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    # ----------------------------------------------------------- observer

    def request_started(self, frame: RequestFrame) -> None:
        capturing_lines(self)

    def request_done(self, frame: RequestFrame, answer: AnsweredRequest, seconds: float) -> None:
        # An empty list is dropped: only the requests that logged keep one.
        self.recorder.add(frame, answer, seconds, current_lines(self) or None)

    # ----------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Listen; OSError if the address cannot be had (after the fallback ports)."""
        page = resources.files(__package__).joinpath("page")
        self._files = {
            path: page.joinpath(name).read_bytes() for path, (name, _) in _PAGE_FILES.items()
        }
        last_error: OSError | None = None
        for port in [self._port, *range(self._port + 1, self._port + 1 + self._port_fallback)]:
            try:
                self._server = await _http.start_http_server(
                    self._handle, self._host, port, max_body=self._max_body + 4096
                )
            except OSError as error:
                last_error = error
                continue
            break
        if self._server is None:
            assert last_error is not None
            if not self._port_fallback:
                raise last_error
            log.warning(
                "the inspector could not listen on %s:%d to %d (%s); serving without it",
                self._host, self._port, self._port + self._port_fallback, last_error.strerror,
            )  # fmt: skip
            return
        self._port = self._server.sockets[0].getsockname()[1]
        formatter = installed_formatter() or logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        )
        self._capture = LogCapture(self, self._redact, formatter)
        logging.getLogger().addHandler(self._capture)
        log.info(
            "inspector on %s: every request as it happens%s%s",
            self.url,
            ", with replay" if self._replay is not None else "",
            " (token required)" if self._token else "",
        )

    async def close(self) -> None:
        if self._capture is not None:
            logging.getLogger().removeHandler(self._capture)
            self._capture = None
        for queue in list(self._pages):
            queue.put_nowait(None)  # ends each open page's event stream
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    # ----------------------------------------------------------- live updates

    def _push(self, kind: str, item: Any) -> None:
        for queue in list(self._pages):
            if queue.qsize() >= _MAX_BACKLOG:
                self._drop(queue)
            else:
                queue.put_nowait((kind, item))

    def _drop(self, queue: asyncio.Queue[tuple[str, Any] | None]) -> None:
        self._pages.discard(queue)
        queue.put_nowait(None)
        if not self._pages:
            self.recorder.listeners.clear()

    def _on_entry(self, entry: Entry) -> None:
        self._push("request", entry)

    def _on_status(self, status: ConnectorStatus) -> None:
        if self._pages:
            self._push("state", None)

    async def _events(self, queue: asyncio.Queue[tuple[str, Any] | None]) -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n\n" + self._event("state", self.state())
            while (item := await queue.get()) is not None:
                kind, value = item
                payload = summary(value) if kind == "request" else self.state()
                yield self._event(kind, payload)
        finally:
            self._pages.discard(queue)
            if not self._pages:
                self.recorder.listeners.clear()

    def _event(self, kind: str, payload: Any) -> bytes:
        return f"event: {kind}\ndata: {self._json(payload)}\n\n".encode()

    # ----------------------------------------------------------- answers

    def _json(self, payload: Any) -> str:
        # Every answer passes the redaction, whatever a body or a log line held.
        return self._redact(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))

    def _reply(self, status: int, payload: Any, **headers: str) -> _http.Reply:
        body = (self._json(payload) + "\n").encode()
        return _http.Reply(
            status,
            body,
            {"Content-Type": "application/json; charset=utf-8", **_SECURITY_HEADERS, **headers},
        )

    def _error(self, status: int, code: str, message: str) -> _http.Reply:
        return self._reply(status, {"error": code, "message": message})

    def state(self) -> dict[str, Any]:
        """The connection's state, as the page's header shows it, and the inspector's own."""
        status = self._status
        return {
            "state": status.shown_state,
            "ready": status.serving,
            "sourceId": status.source_id,
            "organizationId": status.organization_id,
            "environment": status.environment,
            "lastError": status.last_error or status.source_error,
            "lastErrorMessage": status.last_error_message or status.source_error_message,
            "nextAttemptAt": status.next_attempt_at,
            "inFlight": status.in_flight,
            "now": round(time.time(), 3),
            "replay": self._replay is not None,
            "kept": len(self.recorder),
            "keptBytes": self.recorder.kept_bytes,
            "maxRequests": self.recorder.max_requests,
            "maxBytes": self.recorder.max_bytes,
        }

    # ----------------------------------------------------------- routing

    async def _handle(self, request: _http.Request) -> _http.Reply:
        try:
            refusal = self._access(request)
            if refusal is not None:
                return refusal
            return await self._route(request)
        except _Refusal as refused:
            return self._error(refused.status, refused.code, refused.message)

    def _presented_token(self, request: _http.Request) -> str | None:
        authorization = request.headers.get("authorization", "")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        cookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(request.headers.get("cookie", ""))
        morsel = cookie.get(_COOKIE)
        return None if morsel is None else morsel.value

    def _access(self, request: _http.Request) -> _http.Reply | None:
        """A refusal, or None when the request may go on."""
        token = self._token
        if token is None:
            if not _is_loopback_name(request.headers.get("host", "")):
                return self._error(
                    403,
                    "inspector_host_refused",
                    "the inspector answers only loopback names (127.0.0.1, localhost); to "
                    "reach it from elsewhere, listen beyond loopback with a token",
                )
        else:
            given = request.query.get("token", [None])[0] if request.path == "/" else None
            if given is not None and hmac.compare_digest(given.encode(), token.encode()):
                # Once, from the link; then the cookie, so the token leaves the address bar.
                cookie = f"{_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
                return _http.Reply(303, b"", {"Location": "/", "Set-Cookie": cookie})
            presented = self._presented_token(request)
            if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
                return self._error(
                    401,
                    "inspector_token_required",
                    "this inspector needs its token: open /?token=… once, or send "
                    "Authorization: Bearer …",
                )
        if request.method == "POST":
            if not request.headers.get("content-type", "").startswith("application/json"):
                return self._error(
                    415, "inspector_json_required", "send the request as application/json"
                )
            origin = request.headers.get("origin")
            host = request.headers.get("host", "")
            if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
                return self._error(
                    403, "inspector_origin_refused", "requests from another origin are refused"
                )
        return None

    async def _route(self, request: _http.Request) -> _http.Reply:
        path = request.path
        if request.method in ("GET", "HEAD"):
            if path in _PAGE_FILES:
                _, content_type = _PAGE_FILES[path]
                return _http.Reply(
                    200, self._files[path], {"Content-Type": content_type, **_SECURITY_HEADERS}
                )
            if path == "/api/state":
                return self._reply(200, self.state())
            if path == "/api/requests":
                return self._reply(200, self._listed(request.query))
            if path == "/api/events" and request.method == "GET":
                return self._stream()
            if path.startswith("/api/requests/"):
                entry = self._entry(path.removeprefix("/api/requests/"))
                return self._reply(200, detail(entry, engine=self.engine_api))
        elif request.method == "POST":
            if path.startswith("/api/requests/") and path.endswith("/replay"):
                entry = self._entry(path.removeprefix("/api/requests/").removesuffix("/replay"))
                return await self._replay_entry(entry, request.body)
            return self._error(404, "not_found", f"no such route: POST {path}")
        else:
            return self._error(405, "method_not_allowed", "use GET, or POST to replay")
        return self._error(404, "not_found", f"no such route: {path}")

    def _entry(self, quoted_id: str) -> Entry:
        request_id = unquote(quoted_id)
        entry = self.recorder.find(request_id)
        if entry is None:
            raise _Refusal(
                404,
                "inspector_request_not_found",
                f"no kept request has id {request_id!r} (only the newest are kept)",
            )
        return entry

    def _listed(self, query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        operation = query.get("operation", [None])[0]
        model = query.get("model", [None])[0]
        status = query.get("status", [None])[0]
        rows = []
        for entry in self.recorder.newest_first():
            row = summary(entry)
            if operation and row["operation"] != operation:
                continue
            if model and row["model"] != model:
                continue
            if status and not _status_matches(row["status"], status):
                continue
            rows.append(row)
        return rows

    def _stream(self) -> _http.Reply:
        queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
        self._pages.add(queue)
        if self._on_entry not in self.recorder.listeners:
            self.recorder.listeners.append(self._on_entry)
        return _http.Reply(
            200,
            b"",
            {"Content-Type": "text/event-stream", **_SECURITY_HEADERS},
            stream=self._events(queue),
        )

    # ----------------------------------------------------------- replay

    async def _replay_entry(self, entry: Entry, raw: bytes) -> _http.Reply:
        if self._replay is None:
            raise _Refusal(
                403,
                "inspector_replay_off",
                "replay is off: start the connector with --inspect-replay "
                "(ABLO_INSPECT_REPLAY=true); dev has it on",
            )
        body, confirmed = self._replay_body(entry, raw)
        if may_write(body) and not confirmed:
            raise _Refusal(
                409,
                "inspector_write_not_confirmed",
                "this replay is a commit: it writes to the source for real. Send "
                '{"confirmWrite": true} to run it',
            )
        if self._replaying:
            raise _Refusal(429, "inspector_replay_busy", "another replay is running; try again")
        self._replaying = True
        request_id = f"replay_{next(self._replays)}"
        lines = capturing_lines(self)  # this task's log lines are the replay's
        started = time.perf_counter()
        try:
            headers, answer = await self._replay(request_id, body)
        except ReplayRefused as refused:
            raise _Refusal(503, "inspector_replay_refused", str(refused)) from None
        finally:
            self._replaying = False
        frame = RequestFrame(
            id=request_id, method="POST", url=entry.url, headers=dict(headers), body=body
        )
        self.recorder.add(frame, answer, time.perf_counter() - started, lines, replay_of=entry.id)
        added = self.recorder.newest()
        assert added is not None and added.id == request_id
        return self._reply(200, detail(added, engine=self.engine_api))

    def _replay_body(self, entry: Entry, raw: bytes) -> tuple[str, bool]:
        """The body to send (as it was, or the edited one) and whether a write is confirmed."""
        try:
            options = json.loads(raw) if raw.strip() else {}
        except ValueError:
            options = None
        if not isinstance(options, dict):
            raise _Refusal(
                400,
                "inspector_replay_invalid",
                'send {} to replay as it was, or {"body": …} with the edited request body',
            )
        confirmed = options.get("confirmWrite") is True
        edited = options.get("body")
        if edited is None:
            if entry.request_truncated:
                raise _Refusal(
                    409,
                    "inspector_body_truncated",
                    "only the beginning of this request's body was kept; send the whole body "
                    'as {"body": …}',
                )
            return entry.request_body, confirmed
        text = edited if isinstance(edited, str) else json.dumps(edited, separators=(",", ":"))
        if len(text) > self._max_body:
            raise _Refusal(
                413,
                "inspector_body_too_large",
                f"the edited body is over {self._max_body} characters (--max-message-size)",
            )
        return text, confirmed


def _status_matches(status: int, wanted: str) -> bool:
    wanted = wanted.strip().lower()
    if len(wanted) == 3 and wanted.endswith("xx") and wanted[0].isdigit():
        return status // 100 == int(wanted[0])
    return wanted.isdigit() and status == int(wanted)
