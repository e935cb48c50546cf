"""What did the operator ask for? One validated settings object.

The CLI builds a :class:`Config` from flags and environment variables; an
embedding program builds one in code. Everything downstream reads it and
nothing else, so a setting has one name, one default and one check.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from .handler import DataSource
from .protocol import DEFAULT_BASE_URL, websocket_url

__all__ = [
    "DEFAULT_RECONNECT_SCHEDULE",
    "Config",
    "ConfigError",
    "load_handler",
    "read_api_key_file",
]

DEFAULT_RECONNECT_SCHEDULE: Final = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
MiB: Final = 1024 * 1024


class ConfigError(ValueError):
    """A setting is missing or wrong; the message says which and how to fix it."""


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every setting of a connector, with production defaults.

    The API key is kept out of ``repr()`` and never logged.
    """

    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    client_name: str = ""

    # Serving
    max_in_flight: int = 64
    request_timeout: float = 25.0
    signature_tolerance: float = 300.0
    max_message_size: int = 16 * MiB

    # Connection
    open_timeout: float = 10.0
    ready_timeout: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    compression: bool = False
    allow_insecure: bool = False

    # Staying connected
    reconnect_schedule: tuple[float, ...] = DEFAULT_RECONNECT_SCHEDULE
    reconnect_jitter: float = 0.1
    stable_after: float = 10.0
    max_retry_after: float = 300.0
    superseded_backoff: float = 300.0
    exit_on_auth_failure: bool = False

    # Stopping
    shutdown_grace: float = 20.0

    # Operations
    health_addr: str | None = None

    # High availability: dial only while holding this lock (file:///path)
    ha_lock: str | None = None
    ha_retry_interval: float = 0.5
    # How long a vanished leader (host lost, cut off, frozen) keeps the lock.
    ha_lease_duration: float = 15.0

    def __post_init__(self) -> None:
        if not self.api_key or not self.api_key.strip():
            raise ConfigError("an API key is required (--api-key, --api-key-file or ABLO_API_KEY)")
        if self.api_key != self.api_key.strip():
            raise ConfigError("the API key has leading or trailing whitespace")
        if any(ch.isspace() or ord(ch) < 0x21 or ord(ch) > 0x7E for ch in self.api_key):
            raise ConfigError(
                "the API key contains characters that cannot travel in a WebSocket subprotocol"
            )
        _check_url(self.base_url, self.allow_insecure)
        for name in ("max_in_flight", "max_message_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in (
            "request_timeout", "signature_tolerance", "open_timeout", "ready_timeout",
            "ping_interval", "ping_timeout", "shutdown_grace",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0")
        if self.superseded_backoff < 0 or self.stable_after < 0:
            raise ConfigError("superseded_backoff and stable_after must not be negative")
        if not self.reconnect_schedule or any(d < 0 for d in self.reconnect_schedule):
            raise ConfigError("reconnect_schedule needs at least one non-negative delay")
        if not 0 <= self.reconnect_jitter < 1:
            raise ConfigError("reconnect_jitter must be in [0, 1)")
        if self.ha_lock is not None:
            from .ha import lock_from_url

            try:
                lock_from_url(self.ha_lock, lease_duration=self.ha_lease_duration)
            except ValueError as error:
                raise ConfigError(str(error)) from None
        if self.health_addr is not None:
            host, sep, port = self.health_addr.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                raise ConfigError(
                    f"health address {self.health_addr!r} must be HOST:PORT, e.g. 127.0.0.1:9464"
                )

    @property
    def url(self) -> str:
        """The WebSocket URL the connector dials (never contains the key)."""
        return websocket_url(self.base_url)

    @property
    def slowest_delay(self) -> float:
        return self.reconnect_schedule[-1]

    def replace(self, **changes: Any) -> Config:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Config(**values)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(base_url: str, allow_insecure: bool) -> None:
    parts = urlsplit(websocket_url(base_url))
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"base URL {base_url!r} must be an http(s):// or ws(s):// URL with a host"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError("base URL must not carry credentials, a query or a fragment")
    if parts.scheme == "ws" and not allow_insecure and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"refusing to send the API key in clear text to {parts.hostname}: use https:// "
            "(or pass --allow-insecure if this link is otherwise protected)"
        )


def read_api_key_file(path: str | os.PathLike[str]) -> str:
    """Read a key from a file (Docker secret, systemd credential): one line, trimmed."""
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            candidate = Path(credentials) / candidate
    try:
        text = candidate.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the API key file {candidate}: {error.strerror}") from None
    key = text.strip()
    if not key:
        raise ConfigError(f"the API key file {candidate} is empty")
    return key


def load_handler(spec: str) -> DataSource:
    """Import ``module:attr`` and return a :class:`DataSource` instance.

    ``attr`` may name a subclass (instantiated with no arguments), an
    instance, or a factory function returning one. The current directory is
    importable, as with ``uvicorn``.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"handler {spec!r} must look like 'package.module:ClassName'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise ConfigError(
                f"cannot import handler module {module_name!r} (is it on PYTHONPATH?)"
            ) from None
        raise
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if callable(target) and not isinstance(target, DataSource):
        try:
            target = target()
        except Exception as error:
            raise ConfigError(
                f"handler {spec!r} failed to start: {type(error).__name__}: {error}"
            ) from error
    if not isinstance(target, DataSource):
        raise ConfigError(
            f"handler {spec!r} is a {type(target).__name__}, not a connector.DataSource"
        )
    return target
