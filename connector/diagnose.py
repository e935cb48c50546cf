"""``ablo-connector check``: walk the path to the engine one step at a time.

Each step prints one line, ``ok`` or ``FAIL``, and a failure adds what to
check next. The steps: configuration, handler, proxy, DNS, TCP, TLS,
WebSocket upgrade (with the echoed subprotocol), and register/ready.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from .client import CLIENT_NAME, _rejection
from .config import Config
from .protocol import (
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    ErrorFrame,
    ProtocolError,
    ReadyFrame,
    RegisterFrame,
    decode_frame,
    encode_frame,
    subprotocols_for,
)
from .supervisor import EX_CONFIG, EX_UNAVAILABLE

__all__ = ["CheckFailed", "run_checks"]


@dataclass
class CheckFailed(Exception):
    step: str
    detail: str
    hint: str
    exit_status: int = EX_UNAVAILABLE


Echo = Callable[[str], None]


def _key_kind(key: str) -> str:
    for prefix, kind in (("sk_test_", "a test secret key"), ("sk_live_", "a live secret key")):
        if key.startswith(prefix):
            return f"{kind} ({prefix}…, {len(key)} characters)"
    return f"a key that does not start with sk_test_ or sk_live_ ({len(key)} characters)"


def _proxy_for(url: str) -> str | None:
    from websockets.proxy import get_proxy
    from websockets.uri import parse_uri

    return get_proxy(parse_uri(url))


async def run_checks(config: Config, echo: Echo, *, register: bool = True) -> None:
    """Run every step; raises :class:`CheckFailed` at the first failure."""
    url = config.url
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    echo(f"ok    configuration: {url} with {_key_kind(config.api_key)}")

    proxy = _proxy_for(url)
    target_host, target_port = host, port
    if proxy:
        proxy_parts = urlsplit(proxy)
        target_host = proxy_parts.hostname or ""
        target_port = proxy_parts.port or (
            443
            if proxy_parts.scheme == "https"
            else 1080
            if proxy_parts.scheme.startswith("socks")
            else 80
        )
        echo(
            f"ok    proxy: {proxy_parts.scheme}://{target_host}:{target_port} (from the environment; no_proxy does not exclude {host})"
        )
    else:
        echo("ok    proxy: none (direct connection)")

    started = time.monotonic()
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            target_host, target_port, type=socket.SOCK_STREAM
        )
    except socket.gaierror as error:
        raise CheckFailed(
            "dns",
            f"cannot resolve {target_host}: {error.strerror}",
            "check the host name and this machine's DNS (resolv.conf)",
        ) from None
    addresses = sorted({str(info[4][0]) for info in infos})
    echo(
        f"ok    dns: {target_host} -> {', '.join(addresses[:4])} ({(time.monotonic() - started) * 1000:.0f} ms)"
    )

    started = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(target_host, target_port), config.open_timeout
        )
    except (OSError, TimeoutError) as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
        raise CheckFailed(
            "tcp",
            f"cannot connect to {target_host}:{target_port}: {reason}",
            "check firewalls and egress rules for outbound TCP from this host",
        ) from None
    writer.close()
    echo(
        f"ok    tcp: connected to {target_host}:{target_port} ({(time.monotonic() - started) * 1000:.0f} ms)"
    )

    if secure and not proxy:
        await _check_tls(host, port, config.open_timeout, echo)
    elif secure:
        echo("skip  tls: checked inside the proxy tunnel during the upgrade")
    else:
        echo("skip  tls: plain ws:// (loopback or --allow-insecure)")

    started = time.monotonic()
    try:
        ws = await connect(
            url,
            subprotocols=[Subprotocol(p) for p in subprotocols_for(config.api_key)],
            compression=None,
            open_timeout=config.open_timeout,
            user_agent_header=CLIENT_NAME,
        )
    except InvalidStatus as error:
        rejection = _rejection(error)
        auth = rejection.status in (401, 403)
        hint = (
            "the key was refused: use a secret key (sk_test_… or sk_live_…) that is not revoked; "
            "an sk_live_ key needs the source opted into the production reverse channel"
            if auth
            else "the engine is rate limiting connections; wait and retry"
            if rejection.status == 429
            else "check that --base-url points at the Ablo engine"
        )
        raise CheckFailed(
            "websocket", str(rejection), hint, EX_CONFIG if auth else EX_UNAVAILABLE
        ) from None
    except (OSError, TimeoutError, WebSocketException) as error:
        raise CheckFailed(
            "websocket",
            f"upgrade failed: {error or type(error).__name__}",
            "check --base-url, the proxy and any TLS-intercepting middlebox",
        ) from None
    try:
        if ws.subprotocol != SUBPROTOCOL:
            raise CheckFailed(
                "websocket",
                f"the server did not echo {SUBPROTOCOL} (got {ws.subprotocol!r})",
                "--base-url must point at the Ablo engine, not another WebSocket service",
            )
        echo(
            f"ok    websocket: upgraded, subprotocol {SUBPROTOCOL} ({(time.monotonic() - started) * 1000:.0f} ms)"
        )
        if not register:
            echo("skip  register: --no-register")
            return
        await ws.send(
            encode_frame(RegisterFrame(protocol_version=PROTOCOL_VERSION, client=CLIENT_NAME))
        )
        try:
            frame = decode_frame(await asyncio.wait_for(ws.recv(), config.ready_timeout))
        except TimeoutError:
            raise CheckFailed(
                "register",
                f"no ready frame within {config.ready_timeout:g} s",
                "the engine accepted the socket but did not register it; contact support with the time of this check",
            ) from None
        except ProtocolError as error:
            raise CheckFailed(
                "register",
                f"the engine's answer is not a valid frame: {error}",
                "check for a proxy that rewrites WebSocket messages",
            ) from None
        if isinstance(frame, ErrorFrame):
            raise CheckFailed(
                "register",
                f"refused: {frame.code} {frame.message}",
                "see the engine's error code reference",
                EX_CONFIG,
            )
        if not isinstance(frame, ReadyFrame):
            raise CheckFailed(
                "register",
                f"expected ready, got {frame.type}",
                "the engine sent an unexpected frame",
            )
        if frame.protocol_version != PROTOCOL_VERSION:
            raise CheckFailed(
                "register",
                f"the engine speaks protocol {frame.protocol_version}, this connector {PROTOCOL_VERSION}",
                "upgrade ablo-connector",
            )
        identity = {
            "source": frame.source_id,
            "organization": frame.organization_id,
            "environment": frame.environment,
        }
        echo(f"ok    register: ready {json.dumps(identity)}")
    finally:
        await ws.close(1000, "connector_aborted")


async def _check_tls(host: str, port: int, timeout: float, echo: Echo) -> None:
    context = ssl.create_default_context()
    started = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), timeout
        )
    except ssl.SSLCertVerificationError as error:
        raise CheckFailed(
            "tls",
            f"certificate not trusted: {error.verify_message}",
            "install the CA that signs it (a TLS-inspecting proxy needs its CA in the system store, or SSL_CERT_FILE)",
        ) from None
    except (OSError, TimeoutError) as error:
        raise CheckFailed(
            "tls",
            f"handshake failed: {error or 'timed out'}",
            "check for a middlebox that blocks or intercepts TLS",
        ) from None
    ssl_object = writer.get_extra_info("ssl_object")
    certificate = writer.get_extra_info("peercert") or {}
    writer.close()
    expires = certificate.get("notAfter", "?")
    version = ssl_object.version() if ssl_object else "?"
    echo(
        f"ok    tls: {version}, certificate valid until {expires} ({(time.monotonic() - started) * 1000:.0f} ms)"
    )
