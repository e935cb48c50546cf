"""A TCP proxy on 127.0.0.1 that can stop forwarding without closing anything.

While frozen it forwards nothing, in either direction, and holds new
connections without dialing upstream: to each end, the other one has gone
silent (no data, no FIN, no RST), which is what a network partition looks
like to a client and to PostgreSQL's sessions. (The proxy's own kernel still
acknowledges TCP segments, so only timeouts above TCP, such as PostgreSQL's
``idle_session_timeout``, can notice.)
"""

from __future__ import annotations

import asyncio
import contextlib


class FreezableProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again; the links that were frozen are dropped (their peers
        gave up on them long ago)."""
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()
        self._flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.thaw()  # every link is aborted, so every handler returns by itself
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._links.add(writer)
        try:
            await self._flowing.wait()
            if writer.is_closing():  # dropped by thaw() while held
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
            except OSError:
                writer.transport.abort()
                return
            self._links.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            self._tasks.discard(task)
            self._links.discard(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                await self._flowing.wait()  # data read just before a freeze is held too
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
