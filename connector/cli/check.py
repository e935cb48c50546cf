"""Can this host serve? ``ablo-connector check``, one step at a time.

Each step prints one line, ``ok``, ``skip`` or ``FAIL``, and a failure adds
what to check next. The steps: configuration, handler (imports, and its
methods can take the dispatcher's arguments) or database, proxy, DNS, TCP,
TLS, the WebSocket upgrade with the echoed subprotocol, and (only when
asked, since it displaces a running connector) register/ready, driven by
the same session object as the daemon's own connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection

from ..daemon.config import Config
from ..daemon.connection import open_websocket
from ..daemon.transport import proxy_for
from ..errors import (
    EX_CONFIG,
    AuthenticationFailed,
    CheckFailed,
    ConnectFailure,
    RateLimited,
)
from ..wire.frames import SUBPROTOCOL
from ..wire.session import ClientSession, Ended, Invalid, Ready

if TYPE_CHECKING:
    from ..adapters.sql import ServedModel, SQLSource

__all__ = ["describe_models", "describe_plans", "run_checks"]

#: The list shapes whose plan ``check --database-url`` reads for each model:
#: the default page, then a page ordered by each field, up to this many fields.
MAX_FIELDS_PLANNED: Final = 32

Echo = Callable[[str], None]


def _key_kind(key: str) -> str:
    for prefix, kind in (("sk_test_", "a test secret key"), ("sk_live_", "a live secret key")):
        if key.startswith(prefix):
            return f"{kind} ({prefix}…, {len(key)} characters)"
    return f"a key that does not start with sk_test_ or sk_live_ ({len(key)} characters)"


async def run_checks(config: Config, echo: Echo, *, register: bool = False) -> None:
    """Run every step; raises :class:`CheckFailed` at the first failure.

    The upgrade leaves a connector serving the source alone; ``register``
    also registers, which the engine treats as a newer connector taking the
    source over.
    """
    url = config.url
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    echo(f"ok    configuration: {url} with {_key_kind(config.api_key)}")

    proxy = proxy_for(url)
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
        ws = await open_websocket(config, max_size=config.max_message_size)
    except AuthenticationFailed as rejected:
        raise CheckFailed(
            "websocket",
            str(rejected),
            "the key was refused: use a secret key (sk_test_… or sk_live_…) that is not revoked; "
            "an sk_live_ key needs the source opted into the production reverse channel",
            EX_CONFIG,
        ) from None
    except RateLimited as rejected:
        raise CheckFailed(
            "websocket", str(rejected), "the engine is rate limiting connections; wait and retry"
        ) from None
    except ConnectFailure as failure:
        hint = (
            "check that --base-url points at the Ablo engine"
            if getattr(failure, "status", None)
            else "check --base-url, the proxy and any TLS-intercepting middlebox"
        )
        raise CheckFailed("websocket", f"upgrade failed: {failure}", hint) from None
    session = ClientSession(max_message_size=config.max_message_size)
    try:
        if session.accept(ws.subprotocol, url) is not None:
            raise CheckFailed(
                "websocket",
                f"the server did not echo {SUBPROTOCOL} (got {ws.subprotocol!r})",
                "--base-url must point at the Ablo engine, not another WebSocket service",
            )
        echo(
            f"ok    websocket: upgraded, subprotocol {ws.subprotocol} "
            f"({(time.monotonic() - started) * 1000:.0f} ms)"
        )
        if not register:
            echo(
                "skip  register: not checked (the engine's acceptance of the registration, the "
                "source it resolves, ready): registering would take the source from a running "
                "connector; --register checks it"
            )
            return
        await ws.send(session.register_text())
        event = await _first_event(ws, session, config.ready_timeout)
        if isinstance(event, Ended):
            refused = event.failure
            raise CheckFailed(
                "register",
                str(refused),
                "upgrade ablo-connector"
                if refused.code == "protocol_version_mismatch"
                else "see the engine's error code reference",
                EX_CONFIG,
            )
        frame = event.frame
        identity = {
            "source": frame.source_id,
            "organization": frame.organization_id,
            "environment": frame.environment,
        }
        echo(f"ok    register: ready {json.dumps(identity)}")
    finally:
        await ws.close(1000, "connector_aborted")


async def _first_event(
    ws: ClientConnection, session: ClientSession, timeout: float
) -> Ready | Ended:
    """The session's answer to register: ready, or why not (requests are not served here)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            raw = await asyncio.wait_for(ws.recv(), max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            raise CheckFailed(
                "register",
                f"no ready frame within {timeout:g} s",
                "the engine accepted the socket but did not register it; contact support with "
                "the time of this check",
            ) from None
        event = session.receive(raw)
        if isinstance(event, Ready | Ended):
            return event
        if isinstance(event, Invalid):
            raise CheckFailed(
                "register",
                f"the engine's answer is not a valid frame: {event.detail}",
                "check for a proxy that rewrites WebSocket messages",
            )


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


def describe_models(models: Mapping[str, ServedModel]) -> list[str]:
    """What ``check --database-url`` shows of each model it would serve: its
    name on the wire, its table, its id column, and its fields, each with its
    column where the two names differ."""
    lines = []
    for name in sorted(models):
        served = models[name]
        fields = [
            field if column.name == field else f"{field} ({column.name})"
            for field, column in served.columns.items()
            if field != "id"
        ]
        lines.append(
            f"      model {name}: table {served.table.fullname}, id column {served.id.name}, "
            f"fields {', '.join(fields) or '(none)'}"
        )
    return lines


async def describe_plans(source: SQLSource, models: Mapping[str, ServedModel]) -> list[str]:
    """What ``check --database-url`` shows of the list shapes that cannot be
    fast: for each model, the database's plan of its default list page and of
    a page ordered by each field (the first :data:`MAX_FIELDS_PLANNED`), and
    each shape that scans or sorts the whole table, with the index that would
    serve it. Nothing is served; only the plans are read."""
    from ..errors import SourceError
    from ..wire.bodies import ListQuery

    details: list[str] = []
    read = full_table = 0
    by_name = {served.name: served for served in models.values()}
    for name in sorted(by_name):
        fields = [field for field in by_name[name].columns if field != "id"]
        for order_by in [None, *fields[:MAX_FIELDS_PLANNED]]:
            query = ListQuery.model_validate({} if order_by is None else {"orderBy": order_by})
            try:
                shape = await source.shape_plan(name, query)
            except SourceError:
                continue  # a field no page can be ordered by: no shape to plan
            except Exception as error:  # a plan is advice: say which could not be read
                details.append(
                    f"      could not read the plan of a list of model {name!r} ordered by "
                    f"{order_by or 'id'}: {type(error).__name__}"
                )
                continue
            read += 1
            if shape is not None:
                full_table += 1
                details.append(f"      {shape.line()}")
    summary = (
        f"ok    plans: {read} list shapes read (each model's default page, and one ordered by "
        f"each field), {full_table} scan or sort the whole table"
    )
    return [summary, *details]
