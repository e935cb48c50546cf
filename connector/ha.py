"""Who may dial? Leader election for standby replicas.

The engine keeps one connector per source, so replicas must not all dial:
with ``--ha-lock URL`` a replica dials only while it holds the lock, and the
others wait. A backend is a :class:`LeaderLock`: try to take the lock, say
when it was lost, give it back. ``file:///path`` (``flock``, for replicas on
one host) is the first; others plug in through :func:`lock_from_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from urllib.parse import unquote, urlsplit

__all__ = ["FileLock", "LeaderLock", "lock_from_url"]

log = logging.getLogger("connector.ha")


class LeaderLock:
    """One lock per source, held by at most one replica at a time."""

    description = "lock"
    # After taking the lock, wait this long before dialing: time for a leader
    # that lost the lock to notice and fence itself, so two never overlap.
    settle_delay = 0.0

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits for a holder."""
        raise NotImplementedError

    async def wait_lost(self) -> None:
        """Return when the lock is no longer ours (backend gone, lock stolen)."""
        raise NotImplementedError

    async def release(self) -> None:
        """Give the lock back at once, so the next replica can take over."""
        raise NotImplementedError


class FileLock(LeaderLock):
    """An exclusive ``flock`` on a file, for replicas on one host.

    The lock dies with the process (the kernel drops it), so a killed leader
    is replaced at the next standby's attempt. Deleting or replacing the file
    counts as losing the lock: the leader fences itself.
    """

    def __init__(self, path: str, *, check_interval: float = 0.25) -> None:
        self.path = path
        self.description = f"file://{path}"
        self._check_interval = check_interval
        self.settle_delay = 2 * check_interval
        self._fd: int | None = None

    async def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if not self._same_file(fd):  # replaced between open and flock: try again later
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    async def wait_lost(self) -> None:
        while self._fd is not None and self._same_file(self._fd):
            await asyncio.sleep(self._check_interval)

    async def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None


def lock_from_url(url: str) -> LeaderLock:
    """The lock backend a ``--ha-lock`` URL names; ValueError if unknown."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if not path or parts.netloc not in ("", "localhost"):
            raise ValueError(f"--ha-lock {url!r}: use file:///absolute/path")
        return FileLock(path)
    raise ValueError(f"--ha-lock {url!r}: unsupported scheme {parts.scheme!r} (supported: file://)")
