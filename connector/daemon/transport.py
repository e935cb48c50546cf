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

- Reads take at most 64 KiB at a time. asyncio's transports read 256 KiB,
  a buffer above glibc's threshold for serving an allocation from fresh
  mmap()ed pages (128 KiB, raised only once a larger such block has been
  freed): until then every read mapped new memory and faulted its pages
  in, two page faults per request at one in flight. Which processes
  escaped it depended on what happened to be freed while they started;
  turning the inspector on was enough to change that (``perf stat -e
  page-faults`` on the connector under ``bench/run.py``: 12,000 faults for
  6,000 requests, against 180 after).

The first two reach into websockets' private parts (its message queue, its
protocol's pending writes, its fragmented-send lock). Every such use is in
this module, behind :class:`_PrivateParts`, which checks them once per
connection against the installed websockets. When one is missing or
different, the whole connection takes the library's public path
(``recv()`` and ``send()``): slower, never wrong.

This module also counts the bytes that reach the kernel
(:attr:`CoalescingClientConnection.bytes_sent`), so that the connection can
tell an engine that stopped reading from one that is merely busy.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import os
import struct
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any, Final

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State
from websockets.version import version as websockets_version

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

# The most one read takes from the socket: below glibc's mmap threshold (see above).
_READ_SIZE: Final = 64 * 1024
# websockets' default write_limit (the high-water mark its send() drains to).
_WRITE_LIMIT: Final = 32 * 1024
_FIN_TEXT: Final = 0x81  # FIN, opcode 1
_MASKED: Final = 0x80

__all__ = ["CoalescingClientConnection", "MaskKeys", "masked_text_frame", "proxy_for"]

log = logging.getLogger("connector.connection")

# The attribute websockets holds while a fragmented message is being sent:
# renamed in websockets 16.
_FRAGMENTED_SEND_NAMES: Final = ("send_in_progress", "fragmented_send_waiter")


@dataclass(frozen=True, slots=True)
class _PrivateParts:
    """The parts of websockets' internals the fast path relies on, found once."""

    queued: collections.deque[Any]  # messages parsed but not yet taken by recv()
    fragmented_send: str  # the attribute set while a fragmented send is under way

    @classmethod
    def of(cls, connection: ClientConnection) -> _PrivateParts | None:
        """What ``connection`` offers, or None if this websockets differs from
        what the fast path was written for."""
        try:
            queued = connection.recv_messages.frames.queue
            protocol = connection.protocol
            usable = (
                isinstance(queued, collections.deque)
                and isinstance(protocol.writes, list)
                and isinstance(protocol.expect_continuation_frame, bool)
                and isinstance(protocol.extensions, list)
                and callable(connection.send_data)
            )
        except AttributeError:
            return None
        fragmented_send = next(
            (name for name in _FRAGMENTED_SEND_NAMES if hasattr(connection, name)), None
        )
        if not usable or fragmented_send is None:
            return None
        return cls(queued, fragmented_send)


def proxy_for(url: str) -> str | None:
    """The proxy websockets will dial ``url`` through (from the environment), or None.

    websockets does not document the function that knows, and 16 moved it
    from ``websockets.uri`` to ``websockets.proxy``.
    """
    from websockets.uri import parse_uri

    for module in ("websockets.proxy", "websockets.uri"):
        get_proxy = getattr(_module_or_none(module), "get_proxy", None)
        if get_proxy is not None:
            proxy: str | None = get_proxy(parse_uri(url))
            return proxy
    return None  # a websockets without proxy support dials directly


def _module_or_none(name: str) -> object:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_fallback_logged = False


def _log_fallback() -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        log.warning(
            "websockets %s differs from the versions this connector was tested with: "
            "using its public send and receive path (correct, somewhat slower)",
            websockets_version,
        )


class _CoalescingTransport(asyncio.Transport):
    """Wraps the socket transport; only ``write`` is held, the rest passes through."""

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._held: list[bytes] = []
        self._held_size = 0
        # Every byte handed to the socket's transport (see bytes_sent).
        self.bytes_written = 0
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
                self.bytes_written += len(data)
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
            self.bytes_written += len(data)
            self._inner.write(data)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + self._held_size

    @property
    def bytes_sent(self) -> int:
        """Bytes that left for the kernel: written, minus what the transport still buffers."""
        return self.bytes_written - self._inner.get_write_buffer_size()

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
    _private: _PrivateParts | None = None
    _stall_timer: asyncio.TimerHandle | None = None
    _on_stall: Callable[[int, float], None] | None = None
    _stall_after = 0.0
    _writes_paused = False  # the socket's buffer is over its limit (asyncio's flow control)

    def watch_for_stalls(self, seconds: float, on_stall: Callable[[int, float], None]) -> None:
        """Call ``on_stall(unsent_bytes, seconds)`` once if writing stays
        paused (the socket's buffer over its limit) for ``seconds`` without a
        byte reaching the kernel: the peer stopped reading.

        websockets' keepalive cannot tell: its ping waits behind the
        blocked writes before its timeout starts. A link that drains slowly
        but steadily is left alone.
        """
        self._stall_after = seconds
        self._on_stall = on_stall
        if self._writes_paused:
            self._arm_stall_timer()

    def pause_writing(self) -> None:
        self._writes_paused = True
        super().pause_writing()
        if self._on_stall is not None:
            self._arm_stall_timer()

    def resume_writing(self) -> None:
        self._writes_paused = False
        super().resume_writing()
        self._disarm_stall_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_stall_timer()
        super().connection_lost(exc)

    def _arm_stall_timer(self, since: float | None = None, sent: int | None = None) -> None:
        self._disarm_stall_timer()
        loop = asyncio.get_running_loop()
        since = loop.time() if since is None else since
        sent = self.bytes_sent if sent is None else sent
        self._stall_timer = loop.call_later(self._stall_after, self._check_stall, since, sent)

    def _disarm_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _check_stall(self, since: float, sent: int) -> None:
        self._stall_timer = None
        if not self._writes_paused or self._on_stall is None:
            return
        now = asyncio.get_running_loop().time()
        if self.bytes_sent != sent:  # progress: watch from here
            self._arm_stall_timer(now, self.bytes_sent)
            return
        self._on_stall(self.unsent, now - since)

    @property
    def fast_path(self) -> bool:
        """Whether this connection uses websockets' private parts (see the module's docstring)."""
        return self._private is not None

    @property
    def bytes_sent(self) -> int:
        """Bytes of this connection that have left for the kernel so far."""
        return self._coalescing.bytes_sent

    @property
    def unsent(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self._coalescing.get_write_buffer_size()

    def send_text_now(self, payload: bytes) -> bool:
        """Frame and write one UTF-8 text message now, if nothing stands in the way.

        :meth:`send` takes an async context manager per message, and
        websockets' framing a system call per frame for its masking key; this
        writes the same frame (see :func:`masked_text_frame`). False when the
        connection is not open, a fragmented send is under way, or the write
        buffer is over websockets' limit (then :meth:`send` waits for it to
        drain), and on the public path (see the module's docstring).
        """
        private = self._private
        protocol = self.protocol
        if (
            private is None
            or protocol.state is not State.OPEN
            or getattr(self, private.fragmented_send) is not None
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
        False on the public path (see the module's docstring).
        """
        private = self._private
        if private is None:
            return False
        self._queued = private.queued
        self._take = take
        return True

    def frames_waiting(self) -> int:
        """Messages websockets has parsed that no one has taken yet (1 when unknown)."""
        private = self._private
        return 1 if private is None else len(private.queued)

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
        if getattr(transport, "max_size", 0) > _READ_SIZE:  # asyncio's socket transports
            transport.max_size = _READ_SIZE  # type: ignore[attr-defined]
        self._mask_keys = MaskKeys()
        self._coalescing = _CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(self._coalescing)
        self._private = _PrivateParts.of(self)
        if self._private is None:
            _log_fallback()

    def hold_writes_while(self, more_expected: Callable[[], bool]) -> None:
        """Coalesce only while ``more_expected()`` says other writes are coming."""
        self._coalescing.more_expected = more_expected
