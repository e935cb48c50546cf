"""What did the operator ask for? One validated settings object.

An embedding program builds a :class:`Config` in code; the CLI builds one
from flags and environment variables that it generates from this class's
fields. Each setting is written here once, with its default, its flag, its
environment variable, its help text and its group (:func:`setting`), so the
CLI, ``--help`` and the checks can never disagree.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from .._redact import redact_url
from ..errors import ConfigError
from ..ops.health import parse_address
from ..wire.frames import DEFAULT_BASE_URL, LISTEN_PATH, websocket_url

__all__ = [
    "CREDENTIAL_NAME",
    "DEFAULT_RECONNECT_SCHEDULE",
    "Config",
    "Group",
    "Setting",
    "credential_path",
    "inspector_address",
    "read_api_key_file",
    "setting",
]

log = logging.getLogger("connector.config")

DEFAULT_RECONNECT_SCHEDULE: Final = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
CREDENTIAL_NAME: Final = "ablo-api-key"  # systemd LoadCredential= name the unit uses
MiB: Final = 1024 * 1024

Group = Literal["source", "engine", "limits", "operations", "logging"]

_INSPECT_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,}")
# RFC 7230 token characters: what a Sec-WebSocket-Protocol entry may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Setting:
    """How one :class:`Config` field appears on the command line."""

    flag: str
    env: str | None
    help: str
    group: Group
    minimum: float | None = None
    minimum_open: bool = False
    hidden: bool = False
    metavar: str | None = None
    secret: bool = False


def setting(
    default: Any,
    flag: str,
    help: str,
    *,
    group: Group,
    env: str | None = None,
    minimum: float | None = None,
    minimum_open: bool = False,
    hidden: bool = False,
    metavar: str | None = None,
    secret: bool = False,
) -> Any:
    """A field with a default and its command-line form (env defaults to ``ABLO_<FLAG>``);
    a ``secret`` one is left out of ``repr()``."""
    if env is None and not hidden:
        env = "ABLO_" + flag.lstrip("-").replace("-", "_").upper()
    return field(
        default=default,
        repr=not secret,
        metadata={
            "setting": Setting(
                flag, env, help, group, minimum, minimum_open, hidden, metavar, secret
            )
        },
    )


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every setting of a connector, with production defaults.

    Secrets never appear in ``repr()``: the API key is left out, and a lock
    URL shows ``[redacted]`` for its password.
    """

    api_key: str = field(repr=False)

    # The engine: where to dial, and how to stay connected
    base_url: str = setting(
        DEFAULT_BASE_URL, "--base-url", "The Ablo engine to dial.", group="engine", metavar="URL"
    )
    allow_insecure: bool = setting(
        False,
        "--allow-insecure",
        "Allow ws:// to a non-loopback host (the key would travel in clear).",
        group="engine",
    )
    open_timeout: float = setting(
        10.0,
        "--open-timeout",
        "Seconds for TCP, TLS and the WebSocket handshake.",
        group="engine",
        minimum=0,
        minimum_open=True,
    )
    ready_timeout: float = 10.0
    ping_interval: float = setting(
        20.0,
        "--ping-interval",
        "Seconds between keepalive pings.",
        group="engine",
        minimum=0,
        minimum_open=True,
    )
    ping_timeout: float = setting(
        20.0,
        "--ping-timeout",
        "Seconds without a pong before the link counts as dead.",
        group="engine",
        minimum=0,
        minimum_open=True,
    )
    compression: bool = setting(
        False,
        "--compression",
        "Offer permessage-deflate (off by default: it costs CPU).",
        group="engine",
    )
    superseded_backoff: float = setting(
        300.0,
        "--superseded-backoff",
        "Seconds to stand down when a newer connector takes the source (0: until restarted).",
        group="engine",
        minimum=0,
    )
    exit_on_auth_failure: bool = setting(
        False,
        "--exit-on-auth-failure",
        "Exit with status 78 when the engine rejects the key, instead of retrying slowly.",
        group="engine",
    )
    reconnect_schedule: tuple[float, ...] = setting(
        DEFAULT_RECONNECT_SCHEDULE,
        "--reconnect-schedule",
        "Seconds to wait before each reconnect attempt.",
        group="engine",
        hidden=True,
    )
    reconnect_jitter: float = 0.1
    stable_after: float = setting(
        10.0,
        "--stable-after",
        "Seconds ready before the reconnect schedule restarts.",
        group="engine",
        hidden=True,
        minimum=0,
    )
    max_retry_after: float = 300.0

    # Limits
    max_in_flight: int = setting(
        64,
        "--max-in-flight",
        "Handler calls at once; beyond that, stop reading.",
        group="limits",
        minimum=1,
    )
    request_timeout: float = setting(
        25.0,
        "--request-timeout",
        "Seconds per request before a 504.",
        group="limits",
        minimum=0,
        minimum_open=True,
    )
    max_message_size: int = setting(
        16 * MiB,
        "--max-message-size",
        "Largest request frame, in bytes.",
        group="limits",
        minimum=1024,
        metavar="BYTES",
    )
    replay_memory: int = setting(
        16 * MiB,
        "--replay-memory",
        "Bytes of commit answers kept to answer replays of a webhook-id without running the "
        "handler again (0: keep none; the handler's own idempotency still holds).",
        group="limits",
        minimum=0,
        metavar="BYTES",
    )
    spare_threads: int | None = setting(
        None,
        "--spare-threads",
        "Threads that replace plain-def handler calls stuck past their deadline; once all "
        "are stuck the connector reports itself unhealthy. Default: --max-in-flight.",
        group="limits",
        minimum=0,
    )
    shutdown_grace: float = setting(
        20.0,
        "--shutdown-grace",
        "Seconds to finish in-flight requests on SIGTERM.",
        group="limits",
        minimum=0,
        minimum_open=True,
    )
    signature_tolerance: float = 300.0

    # Operations
    health_addr: str | None = setting(
        None,
        "--health-addr",
        "Serve /healthz, /readyz and /metrics here (e.g. 127.0.0.1:9464). Off by default.",
        group="operations",
        metavar="HOST:PORT",
    )
    ha_lock: str | None = setting(
        None,
        "--ha-lock",
        "Run as one of several replicas: dial only while holding this lock (file:///path, "
        "postgresql://…, mysql://…, k8s://namespace/lease).",
        group="operations",
        metavar="URL",
    )
    ha_lease_duration: float = setting(
        15.0,
        "--ha-lease-duration",
        "Seconds a vanished leader (host lost, cut off, frozen) keeps a postgresql://, "
        "mysql:// or k8s:// lock before a standby takes over.",
        group="operations",
        minimum=3,
    )
    ha_retry_interval: float = 0.5
    detailed_errors: bool = setting(
        False,
        "--detailed-errors",
        "Send a failing handler's exception text to the engine (development); by default it "
        "gets a generic message and a reference to the local log line with the detail.",
        group="operations",
    )
    probe_interval: float = 5.0

    # The inspector: a local page of the recent requests
    inspect_addr: str | None = setting(
        None,
        "--inspect",
        "Serve the inspector here: a local page that shows every request as it happens "
        "(e.g. 4040, or 127.0.0.1:4040; a port alone means loopback). Any other host needs "
        "--inspect-token. Off by default ('off').",
        group="operations",
        metavar="[HOST:]PORT",
    )
    inspect_token: str | None = setting(
        None,
        "--inspect-token",
        "The token the inspector asks for (at least 16 letters, digits or -_.~); required when "
        "it listens beyond loopback. Prefer the env var: a flag is visible in the process list.",
        group="operations",
        metavar="TOKEN",
        secret=True,
    )
    inspect_requests: int = setting(
        500,
        "--inspect-requests",
        "Requests the inspector keeps (the newest).",
        group="operations",
        minimum=1,
    )
    inspect_memory: int = setting(
        8 * MiB,
        "--inspect-memory",
        "Bytes of request and answer bodies the inspector keeps, at most (older requests go "
        "first; a body over 64 KiB keeps its first 64 KiB).",
        group="operations",
        minimum=64 * 1024,
        metavar="BYTES",
    )
    inspect_replay: bool = setting(
        False,
        "--inspect-replay",
        "Let the inspector send a past request through the handler again (a commit writes "
        "for real). Off by default in run, on in dev.",
        group="operations",
    )
    #: When the inspector's port is taken, try the next ones (``dev``'s default
    #: address), and serve on without the inspector if none is free.
    inspect_port_fallback: int = 0

    def __post_init__(self) -> None:
        _check_api_key(self.api_key)
        _check_base_url(self.base_url, self.allow_insecure)
        for name in ("max_in_flight", "max_message_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.ha_lease_duration < 3:
            raise ConfigError("ha_lease_duration must be at least 3 seconds")
        if self.replay_memory < 0 or (self.spare_threads or 0) < 0:
            raise ConfigError("replay_memory and spare_threads must not be negative")
        for name in (
            "request_timeout", "signature_tolerance", "open_timeout", "ready_timeout",
            "ping_interval", "ping_timeout", "shutdown_grace", "ha_retry_interval",
            "probe_interval",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0")
        if self.superseded_backoff < 0 or self.stable_after < 0:
            raise ConfigError("superseded_backoff and stable_after must not be negative")
        if not self.reconnect_schedule or any(d < 0 for d in self.reconnect_schedule):
            raise ConfigError("reconnect_schedule needs at least one non-negative delay")
        if not 0 <= self.reconnect_jitter < 1:
            raise ConfigError("reconnect_jitter must be in [0, 1)")
        if self.health_addr is not None:
            try:
                parse_address(self.health_addr)
            except ValueError as error:
                raise ConfigError(f"health address {error}") from None
        self._check_inspector()

    def _check_inspector(self) -> None:
        address = inspector_address(self.inspect_addr)
        object.__setattr__(self, "inspect_addr", address)  # "4040" is "127.0.0.1:4040"
        if self.inspect_requests < 1 or self.inspect_memory < 64 * 1024:
            raise ConfigError(
                "inspect_requests must be at least 1 and inspect_memory at least 65536"
            )
        token = self.inspect_token or None
        object.__setattr__(self, "inspect_token", token)
        if token is not None and not _INSPECT_TOKEN.fullmatch(token):
            # It travels in a URL's query and in a cookie: characters neither alters.
            raise ConfigError(
                "the inspector token must be at least 16 letters, digits or - _ . ~ "
                "(e.g. the output of openssl rand -hex 24)"
            )
        if address is not None and token is None and not _is_loopback(parse_address(address)[0]):
            raise ConfigError(
                f"the inspector on {address} is reachable from other hosts: give it a token "
                "(ABLO_INSPECT_TOKEN, or --inspect-token), or listen on loopback "
                "(--inspect 127.0.0.1:PORT)"
            )

    def __repr__(self) -> str:
        shown = []
        for item in fields(self):
            if not item.repr:
                continue
            value = getattr(self, item.name)
            if item.name == "ha_lock" and value is not None:
                value = redact_url(value)
            shown.append(f"{item.name}={value!r}")
        return f"Config({', '.join(shown)})"

    @property
    def url(self) -> str:
        """The WebSocket URL the connector dials (never contains the key)."""
        return websocket_url(self.base_url)

    @property
    def slowest_delay(self) -> float:
        return self.reconnect_schedule[-1]


def _check_api_key(key: str) -> None:
    if not key or not key.strip():
        raise ConfigError("an API key is required (--api-key, --api-key-file or ABLO_API_KEY)")
    if key != key.strip():
        raise ConfigError("the API key has leading or trailing whitespace")
    if not _TOKEN.fullmatch(key):
        raise ConfigError(
            "the API key contains characters that cannot travel in a WebSocket subprotocol "
            "(spaces, quotes, commas, backslashes, non-ASCII): check that it was copied whole"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(base_url: str, allow_insecure: bool) -> None:
    if base_url.rstrip("/").endswith(LISTEN_PATH):
        raise ConfigError(
            f"base URL {base_url!r} already ends in {LISTEN_PATH}: give the engine's base URL "
            f"(e.g. {base_url.rstrip('/')[: -len(LISTEN_PATH)] or 'https://api.abloatai.com'}); "
            "the connector adds the path itself"
        )
    parts = urlsplit(websocket_url(base_url))
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"base URL {base_url!r} must be an http(s):// or ws(s):// URL with a host"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError("base URL must not carry credentials, a query or a fragment")
    try:
        parts.port  # noqa: B018 - urllib checks the range only when asked
    except ValueError:
        raise ConfigError(f"base URL {base_url!r} has a port outside 1-65535") from None
    if parts.scheme == "ws" and not allow_insecure and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"refusing to send the API key in clear text to {parts.hostname}: use https:// "
            "(or pass --allow-insecure if this link is otherwise protected)"
        )


def inspector_address(text: str | None) -> str | None:
    """``--inspect``'s value as HOST:PORT: a port alone is loopback's; ``off`` (or
    nothing) is None. Raises ConfigError for anything else."""
    if text is None or not text.strip() or text.strip().lower() == "off":
        return None
    text = text.strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    try:
        parse_address(text)
    except ValueError as error:
        raise ConfigError(f"inspector address {error}; or a port alone, or 'off'") from None
    return text


def credential_path(name: str = CREDENTIAL_NAME) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/name`` when systemd handed us that credential."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / name).is_file():
        return Path(directory) / name
    return None


def read_api_key_file(path: str | os.PathLike[str]) -> str:
    """Read a key from a file (Docker secret, systemd credential): one line, trimmed.

    A relative name that does not exist here is looked up among systemd's
    credentials. A file that others may read works, with a warning, as
    ssh does for a key it still accepts.
    """
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        candidate = credential_path(str(candidate)) or candidate
    try:
        text = candidate.read_text(encoding="utf-8")
        mode = candidate.stat().st_mode
    except OSError as error:
        raise ConfigError(f"cannot read the API key file {candidate}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the API key file {candidate} is not UTF-8 text") from None
    if mode & (stat.S_IRGRP | stat.S_IROTH) and stat.S_ISREG(mode):
        log.warning(
            "the API key file %s is readable by other users (mode %03o); restrict it: chmod 600 %s",
            candidate,
            stat.S_IMODE(mode),
            candidate,
        )
    key = text.strip()
    if not key:
        raise ConfigError(f"the API key file {candidate} is empty")
    return key
