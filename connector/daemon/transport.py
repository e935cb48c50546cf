"""How do answers leave? Responses written in one event-loop turn leave in one send.

Under load many handler tasks finish in the same turn, and websockets
writes each response frame to the transport on its own: one ``send()``
system call (and, over TLS, one record) per response. Holding the writes of
a turn and passing them on together at the start of the next one cut the
connector's CPU per request by about a quarter in ``bench/run.py``. Writes
are held only while more are expected (see ``hold_writes_while``): a lone
response goes out at once, so low-load latency pays nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

# websockets' default write_limit (the high-water mark its send() drains to).
_WRITE_LIMIT: Final = 32 * 1024

__all__ = ["CoalescingClientConnection"]


class _CoalescingTransport(asyncio.Transport):
    """Wraps the socket transport; only ``write`` is held, the rest passes through."""

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._held: list[bytes] = []
        self._held_size = 0
        # Whether more writes are likely this turn; when not (one request in
        # flight), holding would only add a loop turn of latency.
        self.more_expected: Callable[[], bool] = lambda: True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            if not self.more_expected():
                self._inner.write(data)
                return
            self._loop.call_soon(self._flush)
        self._held.append(bytes(data))
        self._held_size += len(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._held_size = 0
        if not self._inner.is_closing():
            self._inner.write(data)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + self._held_size

    def write_eof(self) -> None:
        self._flush()
        self._inner.write_eof()

    def close(self) -> None:
        self._flush()
        self._inner.close()

    def abort(self) -> None:
        self._held.clear()
        self._held_size = 0
        self._inner.abort()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()


class CoalescingClientConnection(ClientConnection):
    """A websockets client connection whose writes are coalesced per loop turn."""

    def send_text_now(self, payload: bytes) -> bool:
        """Frame and write one UTF-8 text message now, if nothing stands in the way.

        :meth:`send` takes an async context manager per message (a quarter of
        what sending cost the connector); this is the same write through
        websockets' own sans-I/O protocol. False when the connection is not
        open, a fragmented send is under way, or the write buffer is over
        websockets' limit (then :meth:`send` waits for it to drain).
        """
        if (
            self.protocol.state is not State.OPEN
            or self.send_in_progress is not None
            or self._coalescing.get_write_buffer_size() > _WRITE_LIMIT
        ):
            return False
        self.protocol.send_text(payload)
        self.send_data()
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._coalescing = _CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(self._coalescing)

    def hold_writes_while(self, more_expected: Callable[[], bool]) -> None:
        """Coalesce only while ``more_expected()`` says other writes are coming."""
        self._coalescing.more_expected = more_expected
