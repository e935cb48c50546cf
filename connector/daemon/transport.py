"""How do frames come in and answers leave? One socket's glue to websockets.

Three savings on the hottest path, each measured with ``bench/run.py``:

- Requests are taken straight from the bytes websockets has just parsed
  (``deliver_directly``): no message queue, no waiting reader to wake, no
  extra event-loop turn per message. A request that cannot start at once
  (no free in-flight slot, the HA gate closed, anything that must be
  awaited) goes to websockets' queue instead, and every later message
  follows it there until the reader has taken them, so the order holds.
- Responses written in one batch leave in one ``send()``: those written
  while a batch of received bytes is handled go out when it ends, and
  those written by requests finishing in one loop turn go out at the start
  of the next (see ``hold_writes_while``). A lone response goes out at
  once, so low-load latency pays nothing.
- Responses are framed here (``masked_text_frame``), with masking keys from
  the system's CSPRNG drawn 4 KiB at a time. websockets' own framing (a
  frame object, and a system call for every key) cost about a tenth of
  the connector's CPU per request.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable, Sized
from typing import Any, Final

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

# websockets' default write_limit (the high-water mark its send() drains to).
_WRITE_LIMIT: Final = 32 * 1024
_FIN_TEXT: Final = 0x81  # FIN, opcode 1
_MASKED: Final = 0x80

__all__ = ["CoalescingClientConnection", "MaskKeys", "masked_text_frame"]


class _CoalescingTransport(asyncio.Transport):
    """Wraps the socket transport; only ``write`` is held, the rest passes through."""

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._held: list[bytes] = []
        self._held_size = 0
        # Set while received bytes are handled: what they answer leaves at the end.
        self.batching = False
        # Whether more writes are likely this turn; when not (one request in
        # flight), holding would only add a loop turn of latency.
        self.more_expected: Callable[[], bool] = lambda: True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held and not self.batching:
            if not self.more_expected():
                self._inner.write(data)
                return
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))
        self._held_size += len(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
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
        self.flush()
        self._inner.write_eof()

    def close(self) -> None:
        self.flush()
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


class MaskKeys:
    """RFC 6455 masking keys from the operating system's CSPRNG, drawn 4 KiB
    at a time: one system call per thousand frames instead of one per frame."""

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        at = self._next
        if at >= len(self._pool):
            self._pool = os.urandom(4096)
            at = 0
        self._next = at + 4
        return self._pool[at : at + 4]


def masked_text_frame(payload: bytes, mask_key: bytes) -> bytes:
    """One final, unfragmented, masked text frame (RFC 6455 §5.2), as a client sends it."""
    length = len(payload)
    if length < 126:
        head = bytes((_FIN_TEXT, _MASKED | length))
    elif length < 65536:
        head = struct.pack("!BBH", _FIN_TEXT, _MASKED | 126, length)
    else:
        head = struct.pack("!BBQ", _FIN_TEXT, _MASKED | 127, length)
    return head + mask_key + apply_mask(payload, mask_key)


class CoalescingClientConnection(ClientConnection):
    """A websockets client connection that can hand text messages straight to
    a taker and coalesces its writes (see the module's docstring)."""

    _take: Callable[[bytes], bool] | None = None
    _queued: Sized = ()

    def send_text_now(self, payload: bytes) -> bool:
        """Frame and write one UTF-8 text message now, if nothing stands in the way.

        :meth:`send` takes an async context manager per message, and
        websockets' framing a system call per frame for its masking key; this
        writes the same frame (see :func:`masked_text_frame`). False when the
        connection is not open, a fragmented send is under way, or the write
        buffer is over websockets' limit (then :meth:`send` waits for it to
        drain).
        """
        protocol = self.protocol
        if (
            protocol.state is not State.OPEN
            or self.send_in_progress is not None
            or self._coalescing.get_write_buffer_size() > _WRITE_LIMIT
        ):
            return False
        if protocol.extensions or protocol.expect_continuation_frame or protocol.writes:
            protocol.send_text(payload)  # compressed, or behind websockets' own writes
            self.send_data()
        else:
            self._coalescing.write(masked_text_frame(payload, self._mask_keys.take()))
        return True

    def deliver_directly(self, take: Callable[[bytes], bool] | None) -> bool:
        """Offer each whole text message to ``take`` as it is parsed; None stops it.

        ``take(data)`` runs inside ``data_received``: it must not raise, and
        returns False to leave the message to :meth:`recv` (it is queued
        there, and so is every message after it until the queue is empty).
        False when this version of websockets does not let the queue be seen.
        """
        try:
            self._queued = self.recv_messages.frames.queue
        except AttributeError:
            return False
        self._take = take
        return True

    def process_event(self, event: Event) -> None:
        take = self._take
        if (
            take is not None
            and type(event) is Frame
            and event.opcode is Opcode.TEXT
            and event.fin
            and not self._queued
            and take(event.data if type(event.data) is bytes else bytes(event.data))
        ):
            return
        super().process_event(event)

    def data_received(self, data: bytes) -> None:
        coalescing = self._coalescing
        coalescing.batching = True
        try:
            super().data_received(data)
        finally:
            coalescing.batching = False
            coalescing.flush()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._mask_keys = MaskKeys()
        self._coalescing = _CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(self._coalescing)

    def hold_writes_while(self, more_expected: Callable[[], bool]) -> None:
        """Coalesce only while ``more_expected()`` says other writes are coming."""
        self._coalescing.more_expected = more_expected
