"""``dev``, ``dev-engine`` and ``request``: what a developer types on a laptop."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from ..daemon.config import Config
from ..daemon.signals import run_until_signalled
from ..daemon.supervisor import Connector
from ..errors import EX_CONFIG, EX_FAILURE, ConfigError
from ..ops.logs import configure_logging
from ..serve.datasource import DataSource
from .options import (
    LOG_LEVELS,
    GroupedCommand,
    config_options,
    env_file_option,
    fail,
    guard_inspector_token,
    option,
)
from .sources import (
    build_source,
    django_option,
    django_settings_of,
    guard_url_options,
    source_options,
)

if TYPE_CHECKING:  # the local engine is imported only when it runs
    from ..dev.engine import DevEngine

__all__ = ["DEV_API_KEY", "dev", "dev_engine", "request"]

log = logging.getLogger("connector.cli")

DEV_API_KEY = "sk_test_local_dev_engine"
DEFAULT_ENGINE_API = "http://127.0.0.1:8788"
DEFAULT_INSPECTOR = "127.0.0.1:4040"
# When dev's default inspector port is taken (another dev, ngrok's agent),
# it tries the next ones before serving on without a page.
_INSPECTOR_PORTS_TRIED = 9
_INSPECTOR_SETTINGS = {
    "inspect_addr", "inspect_token", "inspect_requests", "inspect_memory", "inspect_replay"
}  # fmt: skip
_PORTS = click.IntRange(0, 65535)


def _engine_ports(command: Any) -> Any:
    command = option(
        "--api-port", type=_PORTS, default=8788, help="Control API port (POST /v1/source/requests)."
    )(command)
    return option("--port", type=_PORTS, default=8787, help="WebSocket port connectors dial.")(
        command
    )


def _listen_failed(host: str, port: int, api_port: int, error: OSError) -> str:
    return (
        f"cannot listen on {host}:{port} and {host}:{api_port}: {error.strerror} "
        "(another dev engine running? choose other ports with --port/--api-port)"
    )


# ---------------------------------------------------------------- dev engine


@click.command(
    "dev-engine", cls=GroupedCommand, short_help="Run a local engine (no account, no cloud)."
)
@option("--host", default="127.0.0.1", help="Address to listen on.")
@_engine_ports
@option(
    "--api-key",
    env="ABLO_DEV_ENGINE_KEY",
    default=DEV_API_KEY,
    help="The key connectors must present. Not read from ABLO_API_KEY: a real key exported "
    "for run must not become the local engine's.",
)
@option(
    "--request-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
    help="Seconds before a request is retried.",
)  # fmt: skip
@option("--log-level", group="logging", type=LOG_LEVELS, default="info", help="How much to log.")
def dev_engine(
    host: str, port: int, api_port: int, api_key: str, request_timeout: float, log_level: str
) -> None:
    """Run a local engine for development and tests (no account, no cloud)."""
    from ..dev.engine import DevEngine

    configure_logging(log_level, secrets=[api_key])

    async def serve() -> None:
        engine = DevEngine(
            api_key, host=host, port=port, api_port=api_port, request_timeout=request_timeout
        )
        try:
            await engine.start()
        except OSError as error:
            fail(_listen_failed(host, port, api_port, error))
        click.echo(
            f"dev engine ready: connectors dial --base-url {engine.base_url}; "
            f"requests go to {engine.api_url}/v1/source/requests",
            err=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (2, 15):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await engine.close()

    asyncio.run(serve())


# ---------------------------------------------------------------- request


def _post(engine: str, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        engine.rstrip("/") + "/v1/source/requests",
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    except urllib.error.URLError as error:
        fail(
            f"cannot reach the engine at {engine}: {error.reason} "
            "(is `ablo-connector dev-engine` or `ablo-connector dev` running?)",
            EX_FAILURE,
        )
    try:
        pretty = json.dumps(json.loads(text), indent=2)
    except ValueError:
        pretty = text
    click.echo(f"HTTP {status}")
    click.echo(pretty)
    sys.exit(0 if 200 <= status < 300 else 1)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


engine_option = click.option(
    "--engine",
    envvar="ABLO_DEV_ENGINE",
    show_envvar=True,
    default=DEFAULT_ENGINE_API,
    show_default=True,
    help="The dev engine's control API.",
)


@click.group(short_help="Send one request through a running dev engine.")
def request() -> None:
    """Send one request through a running dev engine to your connector."""


@request.command("load")
@click.argument("model")
@click.argument("id")
@engine_option
def request_load(model: str, id: str, engine: str) -> None:
    """Load one row: MODEL ID."""
    _post(engine, {"type": "load", "model": model, "id": id})


# ``FIELD OP VALUE`` with a word operator (spaces around it), then with a
# symbol (spaces optional); the longest spelling first, so ``<=`` is not ``<``.
_WORD_CONDITION = re.compile(
    r"^\s*(?P<field>\S+)\s+(?P<op>NOT\s+ILIKE|NOT\s+LIKE|NOT\s+IN|IS\s+NOT|ILIKE|LIKE|IN|IS)"
    r"\s+(?P<value>.*?)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_SYMBOL_CONDITION = re.compile(
    r"^\s*(?P<field>[^\s=!<>]+)\s*(?P<op>!=|<=|>=|=|<|>)\s*(?P<value>.*?)\s*$", re.DOTALL
)


def parse_condition(text: str) -> list[Any] | dict[str, Any]:
    """One ``--where``: ``done=false``, ``priority>=2``, ``title LIKE %x%``, or JSON.

    The wire form: ``[field, value]`` for ``=``, ``[field, op, value]`` for any
    other operator; a JSON condition (``["priority", ">=", 2]``, or an object
    with ``field``, ``op``, ``value``) is sent as it is. VALUE is JSON when it
    parses (``2``, ``true``, ``null``, ``[1, 2]``, ``"2"``), else a string.
    Raises ValueError with what a condition looks like.
    """
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            condition = json.loads(stripped)
        except ValueError:
            raise ValueError(f"{text!r} is not valid JSON") from None
        if not isinstance(condition, list | dict):
            raise ValueError(f"{text!r} is not a JSON condition")
        return condition
    found = _WORD_CONDITION.match(text) or _SYMBOL_CONDITION.match(text)
    if found is None or not found["value"]:
        raise ValueError(
            f"{text!r} is not a condition: write FIELD OP VALUE (done=false, priority>=2, "
            "'title LIKE %x%', 'priority IN [1,2]') or a JSON condition"
        )
    op = " ".join(found["op"].upper().split())
    value = _parse_value(found["value"])
    return [found["field"], value] if op == "=" else [found["field"], op, value]


@request.command("list")
@click.argument("model")
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="CONDITION",
    help="A condition every row must meet (repeatable): FIELD OP VALUE, where OP is "
    "=, !=, <, <=, >, >= (spaces optional: done=false, priority>=2) or IN, NOT IN, IS, "
    "IS NOT, LIKE, NOT LIKE, ILIKE, NOT ILIKE (with spaces: 'title LIKE %x%', "
    "'priority IN [1,2]'); or a JSON condition ('[\"priority\", \">=\", 2]'). VALUE is "
    "JSON when it parses (2, true, null, [1,2], '\"2\"'), else a string.",
)
@click.option("--limit", type=click.IntRange(0), help="Rows per page (0: none).")
@click.option("--order-by", metavar="FIELD", help="Sort by this field (then by id).")
@click.option("--desc", is_flag=True, help="Sort descending.")
@click.option("--cursor", help="Continue from a previous page's nextCursor.")
@engine_option
def request_list(
    model: str,
    where: tuple[str, ...],
    limit: int | None,
    order_by: str | None,
    desc: bool,
    cursor: str | None,
    engine: str,
) -> None:
    """List rows of MODEL: ablo-connector request list task --where done=false --where 'priority>=2'"""
    conditions = []
    for item in where:
        try:
            conditions.append(parse_condition(item))
        except ValueError as error:
            fail(f"--where {error}", 2)
    query: dict[str, Any] = {"where": conditions} if conditions else {}
    if limit is not None:
        query["limit"] = limit
    if order_by:
        query["orderBy"] = order_by
        query["order"] = "desc" if desc else "asc"
    if cursor:
        query["cursor"] = cursor
    _post(engine, {"type": "list", "model": model, "query": query})


@request.command("commit")
@click.argument(
    "operation",
    type=click.Choice(["create", "update", "delete", "archive", "unarchive"], case_sensitive=False),
)
@click.argument("model")
@click.argument("id")
@click.argument("input_json", required=False, default="{}", metavar="[INPUT_JSON]")
@click.option("--correlation-id", help="Idempotency key (default: a new one).")
@engine_option
def request_commit(
    operation: str,
    model: str,
    id: str,
    input_json: str,
    correlation_id: str | None,
    engine: str,
) -> None:
    """Commit one operation: OPERATION MODEL ID [INPUT_JSON]."""
    import uuid

    try:
        data = json.loads(input_json)
    except ValueError:
        fail('INPUT_JSON must be a JSON object, e.g. \'{"title": "x"}\'', 2)
    if not isinstance(data, dict):
        fail("INPUT_JSON must be a JSON object", 2)
    op = {"type": operation.upper(), "model": model, "id": id, "input": data}
    _post(
        engine,
        {
            "type": "commit",
            "operations": [op],
            "correlationId": correlation_id or f"cli_{uuid.uuid4().hex}",
        },
    )


@request.command("events")
@click.option("--cursor", help="Continue after this cursor (a previous nextCursor).")
@click.option("--limit", type=click.IntRange(0), help="At most this many events.")
@engine_option
def request_events(cursor: str | None, limit: int | None, engine: str) -> None:
    """Read the change feed."""
    body: dict[str, Any] = {"type": "events"}
    if cursor:
        body["cursor"] = cursor
    if limit is not None:
        body["limit"] = limit
    _post(engine, body)


@request.command("raw")
@click.argument("body_json")
@engine_option
def request_raw(body_json: str, engine: str) -> None:
    """Send a request body exactly as given (JSON)."""
    try:
        body = json.loads(body_json)
    except ValueError:
        fail("BODY_JSON is not valid JSON", 2)
    _post(engine, body)


# ---------------------------------------------------------------- dev


@click.command(
    cls=GroupedCommand, short_help="Run a local engine and the connector, and show round trips."
)
@env_file_option
@source_options("Serve your DataSource instead of the demo database.")
@django_option
@_engine_ports
@option(
    "--exit-after-demo", is_flag=True, help="Stop after the demo requests instead of serving on."
)
@config_options(
    _INSPECTOR_SETTINGS, defaults={"inspect_addr": DEFAULT_INSPECTOR, "inspect_replay": True}
)
@option("--log-level", group="logging", type=LOG_LEVELS, default="info", help="How much to log.")
@click.pass_context
def dev(
    ctx: click.Context,
    /,
    handler_spec: str | None,
    database_url: str | None,
    models_path: str | None,
    django_settings: str | None,
    port: int,
    api_port: int,
    exit_after_demo: bool,
    log_level: str,
    **inspector: Any,
) -> None:
    """Run a local engine and the connector together, and show a few round trips.

    By default it serves a demo SQLite database of tasks through the SQL
    adapter: no account, no cloud. The database is new for each run, lives in
    a temporary folder (its path is printed) and is removed on exit, so every
    run starts from the same rows. While it runs, try `ablo-connector request
    load task t1` in another terminal. With --database-url it serves your
    database instead (try `ablo-connector request list MODEL`), with --handler
    your own code, with --django mysite.settings (or DJANGO_SETTINGS_MODULE)
    a Django project's models; as with run, the environment variables
    (ABLO_DATABASE_URL, ABLO_CONNECTOR_HANDLER, ABLO_MODELS, ABLO_DJANGO) and
    --env-file say so too.

    The inspector (http://127.0.0.1:4040, printed at start) shows every
    request as it happens, and replays one, as it was or edited;
    --inspect off turns it off.
    """
    formatter = configure_logging(log_level, secrets=[DEV_API_KEY])
    if ctx.get_parameter_source("inspect_addr") is click.core.ParameterSource.DEFAULT:
        inspector["inspect_port_fallback"] = _INSPECTOR_PORTS_TRIED
    if models_path and not database_url:
        fail("--models needs --database-url (the demo database needs no map)")
    django_settings = django_settings_of(handler_spec, database_url, django_settings)
    scratch: Path | None = None
    try:
        demo: list[dict[str, Any]] = []
        if not handler_spec and not database_url and not django_settings:
            scratch = Path(tempfile.mkdtemp(prefix="ablo-connector-demo-"))
            _remove_on_interrupt(scratch)
            database_url = _demo_database(scratch / "demo.db")
            demo = _demo_requests()
        try:
            guard_url_options(ctx, formatter.add_secret)
            # Development: a failing handler's exception text goes to the engine (and `request`).
            config = Config(
                api_key=DEV_API_KEY,
                base_url="http://127.0.0.1:1",  # the local engine's, once it listens
                detailed_errors=True,
                **{name: value for name, value in inspector.items() if value is not None},
            )
            guard_inspector_token(ctx, config, formatter.add_secret, warn=log.warning)
            source = build_source(
                ctx,
                handler_spec,
                database_url,
                models_path,
                add_secret=formatter.add_secret,
                django_settings=django_settings,
            )
        except ConfigError as error:
            fail(str(error))
        sys.exit(asyncio.run(_dev(source, config, port, api_port, exit_after_demo, demo)))
    finally:  # however it ends (a mistake, Ctrl-C before serving, a signal), no demo is left
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _remove_on_interrupt(scratch: Path) -> None:
    """Ctrl-C before the connector serves may end the process at once (see the
    console script's entry point): remove the demo database first."""
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # ignored, or no Python handler: nothing to run first
        return

    def remove_then_interrupt(signum: int, frame: FrameType | None) -> None:
        shutil.rmtree(scratch, ignore_errors=True)
        previous(signum, frame)

    signal.signal(signal.SIGINT, remove_then_interrupt)


def _demo_database(path: Path) -> str:
    from ..adapters.sql import create_database_engine, migrate
    from ..dev.demo import create_demo_database

    url = create_demo_database(path)
    engine = create_database_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    click.echo(f"demo database: {path} (new for this run, removed on exit)", err=True)
    return url


def _demo_requests() -> list[dict[str, Any]]:
    from ..dev.demo import DEMO_REQUESTS

    return DEMO_REQUESTS


async def _dev(
    source: DataSource,
    config: Config,
    port: int,
    api_port: int,
    exit_after_demo: bool,
    demo: list[dict[str, Any]],
) -> int:
    from ..dev.engine import DevEngine

    engine = DevEngine(DEV_API_KEY, port=port, api_port=api_port)
    try:
        await engine.start()
    except OSError as error:
        fail(_listen_failed("127.0.0.1", port, api_port, error), EX_CONFIG)
    connector = Connector(dataclasses.replace(config, base_url=engine.base_url), source)
    if connector.inspector is not None and engine.api_url != DEFAULT_ENGINE_API:
        connector.inspector.engine_api = engine.api_url  # for "copy as command"
    serving = asyncio.ensure_future(run_until_signalled(connector))
    # A signal ends the connector, not the demo: the demo must end with it,
    # or it would wait on requests that nobody serves any more.
    showing = asyncio.ensure_future(_show_demo(connector, engine, demo))
    try:
        await asyncio.wait({serving, showing}, return_when=asyncio.FIRST_COMPLETED)
        failed_first = showing.done() and showing.exception() is not None
        if showing.done() and not (failed_first and (connector.stopping or serving.done())):
            # Not ready in time: the error, as from wait_for. (Stopped by a
            # signal, or by its own error, before it was ready: the
            # connector's exit status says so.)
            showing.result()
            if exit_after_demo:
                connector.stop()
            else:
                # `request` goes to ABLO_DEV_ENGINE, else the default engine.
                asks = os.environ.get("ABLO_DEV_ENGINE") or DEFAULT_ENGINE_API
                elsewhere = "" if engine.api_url == asks else f" --engine {engine.api_url}"
                click.echo(
                    f"\nServing. Try: ablo-connector request {await _example(source, demo)}{elsewhere}"
                    "\nCtrl-C to stop.",
                    err=True,
                )
        return await serving
    finally:
        showing.cancel()
        await engine.close()


async def _example(source: DataSource, demo: list[dict[str, Any]]) -> str:
    """A request to try by hand: on the demo's tasks, or a list of a model served."""
    if demo:
        return "load task t1"
    try:
        declared = source.served_models()
        if inspect.isawaitable(declared):
            declared = await declared
    except Exception:  # only a hint: a source's failure is for its requests to tell
        declared = None
    names = sorted(declared or ())
    return f"list {names[0]}" if names else "list MODEL"


async def _show_demo(connector: Connector, engine: DevEngine, demo: list[dict[str, Any]]) -> None:
    await connector.wait_ready(15)
    inspector = connector.inspector
    if inspector is not None and inspector.url is not None:  # it listens before the dial
        click.echo(
            f"inspector: {inspector.url} (every request as it happens; replay and edit)",
            err=True,
        )
    for body in demo:
        result = await engine.request(body)
        click.echo(f"\n→ {json.dumps(body)}\n← HTTP {result.status} {result.body}")
