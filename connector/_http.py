"""A deliberately tiny HTTP/1.1 server on asyncio streams.

Enough for the local engine's control API, the health endpoint and the
inspector: one request per connection, ``Content-Length`` bodies, bounded
sizes and timeouts, and streamed replies (server-sent events) that end when
the client goes away. Not a web framework, and not exposed as public API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("connector.http")

_MAX_HEAD = 16 * 1024
_READ_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Written chunk by chunk after the head, without a Content-Length, until
    #: it ends or the client goes away (server-sent events).
    stream: AsyncIterator[bytes] | None = None

    @classmethod
    def json(cls, status: int, payload: Any, **headers: str) -> Reply:
        body = (json.dumps(payload, separators=(",", ":")) + "\n").encode()
        return cls(status, body, {"Content-Type": "application/json", **headers})

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Reply:
        return cls(status, text.encode(), {"Content-Type": content_type})


Handler = Callable[[Request], Awaitable[Reply]]


async def _read_request(reader: asyncio.StreamReader, max_body: int) -> Request | Reply:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
    except asyncio.LimitOverrunError:
        return Reply.json(431, {"error": "request_header_too_large"})
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        return Reply.json(400, {"error": "bad_request_line"})
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length_text = headers.get("content-length", "0") or "0"
    if not length_text.isdigit():
        return Reply.json(400, {"error": "bad_content_length"})
    length = int(length_text)
    if length > max_body:
        return Reply.json(413, {"error": "request_body_too_large", "limit": max_body})
    body = await asyncio.wait_for(reader.readexactly(length), _READ_TIMEOUT) if length else b""
    parts = urlsplit(target)
    return Request(method.upper(), parts.path, parse_qs(parts.query), headers, body)


async def _write_reply(writer: asyncio.StreamWriter, reply: Reply, *, with_body: bool) -> None:
    reason = (
        HTTPStatus(reply.status).phrase if reply.status in HTTPStatus._value2member_map_ else ""
    )
    head = [f"HTTP/1.1 {reply.status} {reason}"]
    framing = {} if reply.stream is not None else {"Content-Length": str(len(reply.body))}
    headers = {**framing, "Connection": "close", **reply.headers}
    head += [f"{name}: {value}" for name, value in headers.items()]
    # A HEAD reply has the headers a GET would get, Content-Length included, and no body.
    body = reply.body if with_body else b""
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


async def _write_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunks: AsyncIterator[bytes]
) -> None:
    """Write ``chunks`` as they come, until they end or the client closes its side."""

    async def write_all() -> None:
        async for chunk in chunks:
            writer.write(chunk)
            await writer.drain()

    writing = asyncio.ensure_future(write_all())
    # The client sends nothing more; end of file means it went away.
    hung_up = asyncio.ensure_future(reader.read())
    try:
        await asyncio.wait({writing, hung_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (writing, hung_up):
            task.cancel()
        await asyncio.gather(writing, hung_up, return_exceptions=True)
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def start_http_server(
    handler: Handler, host: str, port: int, *, max_body: int = 16 * 1024 * 1024
) -> asyncio.Server:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            parsed = await _read_request(reader, max_body)
            with_body = True
            if isinstance(parsed, Reply):
                reply = parsed
            else:
                with_body = parsed.method != "HEAD"
                try:
                    reply = await handler(parsed)
                except Exception:
                    log.exception("HTTP handler failed for %s %s", parsed.method, parsed.path)
                    reply = Reply.json(500, {"error": "internal_error"})
            await _write_reply(writer, reply, with_body=with_body)
            if reply.stream is not None and with_body:
                await _write_stream(reader, writer, reply.stream)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(on_connection, host, port, limit=_MAX_HEAD)
