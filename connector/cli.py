"""What does the operator type? The ``ablo-connector`` command.

Each command only builds a :class:`~connector.config.Config` (or a dev
engine) from flags and environment variables, hands it to the library, and
maps the outcome to an exit status. Usage and configuration mistakes get one
line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from ._version import __version__
from .config import Config, ConfigError, load_handler, read_api_key_file
from .handler import DataSource
from .logs import RedactingFormatter, configure_logging
from .protocol import DEFAULT_BASE_URL
from .supervisor import EX_CONFIG, EX_UNAVAILABLE, Connector, run_until_signalled

if TYPE_CHECKING:
    from .adapters.sql import SQLSource

log = logging.getLogger("connector.cli")

DEV_API_KEY = "sk_test_local_dev_engine"
DEFAULT_ENGINE_API = "http://127.0.0.1:8788"
LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


def _fail(message: str, status: int = EX_CONFIG) -> NoReturn:
    click.echo(f"ablo-connector: error: {message}", err=True)
    sys.exit(status)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="ablo-connector")
def main() -> None:
    """Serve an Ablo Data Source from a private network over one outbound WebSocket.

    \b
    Typical use:
      ablo-connector run --handler mypkg.source:MySource      (key in ABLO_API_KEY)
      ablo-connector dev                                      (try it locally, no account)
    """


# ---------------------------------------------------------------- options

_SECONDS = click.FloatRange(min=0, min_open=True)
_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _setting(
    flag: str, env: str | None = None, *, name: str | None = None, **kwargs: Any
) -> _Decorator:
    """An option that names its environment variable and default in --help."""
    if env is not None:
        kwargs.update(envvar=env, show_envvar=True)
    kwargs.setdefault("show_default", "default" in kwargs and not kwargs.get("is_flag"))
    return click.option(flag, *([name] if name else []), **kwargs)


def _key_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = _setting(
        "--api-key-file",
        "ABLO_API_KEY_FILE",
        type=click.Path(dir_okay=False),
        help="Read the key from this file (Docker secret, systemd LoadCredential=).",
    )(command)
    return _setting(
        "--api-key",
        "ABLO_API_KEY",
        help="Secret API key (sk_test_… / sk_live_…). Prefer the env var or --api-key-file.",
    )(command)


def _handler_option(help_text: str) -> _Decorator:
    return _setting(
        "--handler",
        "ABLO_CONNECTOR_HANDLER",
        name="handler_spec",
        metavar="MODULE:ATTR",
        help=help_text,
    )


def _database_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = _setting(
        "--models",
        "ABLO_MODELS",
        name="models_path",
        type=click.Path(dir_okay=False),
        help="Model map (TOML): which tables serve which models. Default: every table, by name.",
    )(command)
    return _setting(
        "--database-url",
        "ABLO_DATABASE_URL",
        metavar="URL",
        help="Serve this database with no handler code (sqlite:///app.db, postgresql://…).",
    )(command)


def _build_source(
    handler_spec: str | None,
    database_url: str | None,
    models_path: str | None,
    formatter: RedactingFormatter | None = None,
    *,
    url_on_command_line: bool = False,
) -> DataSource:
    """The user's handler, or the SQL adapter over ``database_url``."""
    if handler_spec and database_url:
        raise ConfigError("give --handler or --database-url, not both")
    if models_path and not database_url:
        raise ConfigError("--models needs --database-url")
    if handler_spec:
        return load_handler(handler_spec)
    if not database_url:
        raise ConfigError(
            "say what to serve: --handler package.module:ClassName, or --database-url URL"
        )
    from sqlalchemy.exc import OperationalError

    source = _sql_source(database_url, models_path, formatter)
    shown = source.engine.url.render_as_string(hide_password=True)
    if url_on_command_line and source.engine.url.password:
        log.warning(
            "the database password was given on the command line, where other local users "
            "can see it in the process list; prefer ABLO_DATABASE_URL"
        )
    try:
        source.prepare()
    except OperationalError:
        # Not a configuration mistake: the database may be restarting. Serve
        # anyway (requests answer 503 until it is back) instead of exiting.
        log.warning(
            "the database at %s is unreachable; requests answer 503 until it is back", shown
        )
    return source


def _sql_source(
    database_url: str, models_path: str | None, formatter: RedactingFormatter | None = None
) -> SQLSource:
    """The SQL adapter for a URL and an optional model map; its password joins the redactions."""
    from .adapters.sql import ModelMap, SQLSource
    from .adapters.sql import database_url as parse_database_url

    url = parse_database_url(database_url)
    if formatter is not None and url.password:
        formatter.add_secret(str(url.password))
    return SQLSource(url, ModelMap.from_toml(models_path) if models_path else None)


_base_url_option = _setting(
    "--base-url", "ABLO_BASE_URL", default=DEFAULT_BASE_URL, help="The Ablo engine to dial."
)
_allow_insecure_option = _setting(
    "--allow-insecure",
    is_flag=True,
    help="Allow ws:// to a non-loopback host (the key would travel in clear).",
)


def _engine_ports(command: Callable[..., Any]) -> Callable[..., Any]:
    ports = click.IntRange(0, 65535)
    command = _setting(
        "--api-port", type=ports, default=8788, help="Control API port (POST /v1/source/requests)."
    )(command)
    return _setting("--port", type=ports, default=8787, help="WebSocket port connectors dial.")(
        command
    )


_open_timeout_option = _setting(
    "--open-timeout",
    "ABLO_OPEN_TIMEOUT",
    type=_SECONDS,
    default=10.0,
    help="Seconds for TCP, TLS and the WebSocket handshake.",
)


# ---------------------------------------------------------------- run


def _resolve_api_key(ctx: click.Context, api_key: str | None, api_key_file: str | None) -> str:
    if api_key and api_key_file:
        _fail("give --api-key or --api-key-file, not both")
    if api_key_file:
        return read_api_key_file(api_key_file)
    if api_key:
        if ctx.get_parameter_source("api_key") is click.core.ParameterSource.COMMANDLINE:
            log.warning(
                "the API key was given on the command line, where other local users can see it "
                "in the process list; prefer ABLO_API_KEY or --api-key-file"
            )
        return api_key
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and os.path.exists(os.path.join(credentials, "ablo-api-key")):
        return read_api_key_file(os.path.join(credentials, "ablo-api-key"))
    _fail("an API key is required: set ABLO_API_KEY, or pass --api-key-file (or --api-key)")


@main.command()
@_key_options
@_handler_option("Your DataSource: a subclass, instance or factory.")
@_database_options
@_base_url_option
@_setting(
    "--max-in-flight",
    "ABLO_MAX_IN_FLIGHT",
    type=click.IntRange(1),
    default=64,
    help="Handler calls at once; beyond that, stop reading.",
)
@_setting(
    "--request-timeout",
    "ABLO_REQUEST_TIMEOUT",
    type=_SECONDS,
    default=25.0,
    help="Seconds per request before a 504.",
)
@_setting(
    "--shutdown-grace",
    "ABLO_SHUTDOWN_GRACE",
    type=_SECONDS,
    default=20.0,
    help="Seconds to finish in-flight requests on SIGTERM.",
)
@_setting(
    "--max-message-size",
    "ABLO_MAX_MESSAGE_SIZE",
    type=click.IntRange(1024),
    default=16 * 1024 * 1024,
    help="Largest request frame, in bytes.",
)
@_setting(
    "--superseded-backoff",
    "ABLO_SUPERSEDED_BACKOFF",
    type=click.FloatRange(min=0),
    default=300.0,
    help="Seconds to stand down when a newer connector takes the source (0: until restarted).",
)
@_setting(
    "--exit-on-auth-failure",
    "ABLO_EXIT_ON_AUTH_FAILURE",
    is_flag=True,
    help="Exit with status 78 when the engine rejects the key, instead of retrying slowly.",
)
@_allow_insecure_option
@_setting(
    "--compression", is_flag=True, help="Offer permessage-deflate (off by default: it costs CPU)."
)
@_open_timeout_option
@_setting(
    "--ping-interval",
    "ABLO_PING_INTERVAL",
    type=_SECONDS,
    default=20.0,
    help="Seconds between keepalive pings.",
)
@_setting(
    "--ping-timeout",
    "ABLO_PING_TIMEOUT",
    type=_SECONDS,
    default=20.0,
    help="Seconds without a pong before the link counts as dead.",
)
@_setting(
    "--health-addr",
    "ABLO_HEALTH_ADDR",
    metavar="HOST:PORT",
    help="Serve /healthz, /readyz and /metrics here (e.g. 127.0.0.1:9464). Off by default.",
)
@_setting(
    "--ha-lock",
    "ABLO_HA_LOCK",
    metavar="URL",
    help="Run as one of several replicas: dial only while holding this lock (file:///path).",
)
@_setting(
    "--ha-lease-duration",
    "ABLO_HA_LEASE_DURATION",
    type=click.FloatRange(min=3.0),
    default=15.0,
    help="Seconds a vanished leader keeps the --ha-lock (PostgreSQL, Kubernetes) before a standby takes over.",
)
@_setting("--stable-after", type=click.FloatRange(min=0), default=10.0, hidden=True)
@_setting("--reconnect-schedule", default="0,1,2,5,10,30", hidden=True)
@_setting("--log-level", "ABLO_LOG_LEVEL", type=LOG_LEVELS, default="info")
@_setting("--log-format", "ABLO_LOG_FORMAT", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def run(ctx: click.Context, api_key: str | None, api_key_file: str | None, handler_spec: str | None, database_url: str | None, models_path: str | None, base_url: str, max_in_flight: int, request_timeout: float, shutdown_grace: float, max_message_size: int, superseded_backoff: float, exit_on_auth_failure: bool, allow_insecure: bool, compression: bool, open_timeout: float, ping_interval: float, ping_timeout: float, health_addr: str | None, ha_lock: str | None, ha_lease_duration: float, stable_after: float, reconnect_schedule: str, log_level: str, log_format: str) -> None:  # fmt: skip
    """Dial the engine and serve your Data Source until stopped.

    Serve your own handler (--handler), or tables of a database with no code
    at all (--database-url, optionally --models).

    SIGTERM or SIGINT finishes in-flight requests (up to --shutdown-grace),
    then exits 0; a second signal exits at once. Exit 78: configuration or
    credential problem (with --exit-on-auth-failure).
    """
    formatter = configure_logging(log_level, "json" if log_format == "json" else "text")
    try:
        key = _resolve_api_key(ctx, api_key, api_key_file)
        formatter.add_secret(key)
        config = Config(
            api_key=key,
            base_url=base_url,
            max_in_flight=max_in_flight,
            request_timeout=request_timeout,
            shutdown_grace=shutdown_grace,
            max_message_size=max_message_size,
            superseded_backoff=superseded_backoff,
            exit_on_auth_failure=exit_on_auth_failure,
            allow_insecure=allow_insecure,
            compression=compression,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            stable_after=stable_after,
            reconnect_schedule=_schedule(reconnect_schedule),
            health_addr=health_addr or None,
            ha_lock=ha_lock or None,
            ha_lease_duration=ha_lease_duration,
        )
        source = _build_source(
            handler_spec, database_url, models_path, formatter,
            url_on_command_line=ctx.get_parameter_source("database_url")
            is click.core.ParameterSource.COMMANDLINE,
        )  # fmt: skip
    except ConfigError as error:
        _fail(str(error))
    sys.exit(asyncio.run(run_until_signalled(Connector(config, source))))


def _schedule(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--reconnect-schedule {text!r} must be comma-separated seconds"
        ) from None


# ---------------------------------------------------------------- check


@main.command()
@_key_options
@_handler_option("Also check that the handler imports.")
@_database_options
@_base_url_option
@_allow_insecure_option
@_open_timeout_option
@_setting(
    "--no-register",
    is_flag=True,
    help="Stop after the WebSocket upgrade (registering takes the source from a connector already serving it).",
)
@click.pass_context
def check(ctx: click.Context, api_key: str | None, api_key_file: str | None, handler_spec: str | None, database_url: str | None, models_path: str | None, base_url: str, allow_insecure: bool, open_timeout: float, no_register: bool) -> None:  # fmt: skip
    """Diagnose the path to the engine, one step at a time.

    Checks the configuration, the handler or the database, proxy, DNS, TCP, TLS, the WebSocket
    upgrade and the echoed subprotocol, then registers and prints the source
    the engine resolved. Registering supersedes a connector already serving
    the same source: run it before starting the service, or pass --no-register.

    Exit 0 when every step passes, 69 when the engine cannot be reached, 78
    for a configuration or credential problem.
    """
    from .diagnose import CheckFailed, run_checks

    configure_logging("warning")
    try:
        key = _resolve_api_key(ctx, api_key, api_key_file)
        config = Config(
            api_key=key, base_url=base_url, allow_insecure=allow_insecure, open_timeout=open_timeout
        )
        if handler_spec:
            source = load_handler(handler_spec)
            implemented = [
                op
                for op in ("load", "list", "commit", "events")
                if getattr(type(source), op) is not getattr(DataSource, op)
            ]
            click.echo(
                f"ok    handler: {handler_spec} ({type(source).__name__}: {', '.join(implemented) or 'no operations'})"
            )
        if database_url:
            _check_database(handler_spec, database_url, models_path)
    except ConfigError as error:
        click.echo(f"FAIL  configuration: {error}")
        sys.exit(EX_CONFIG)
    try:
        asyncio.run(run_checks(config, click.echo, register=not no_register))
    except CheckFailed as failure:
        click.echo(f"FAIL  {failure.step}: {failure.detail}")
        click.echo(f"      what to check: {failure.hint}")
        sys.exit(failure.exit_status)
    click.echo("all checks passed")


def _check_database(handler_spec: str | None, database_url: str, models_path: str | None) -> None:
    from sqlalchemy.exc import OperationalError

    from .adapters.sql import describe_database_error

    if handler_spec:
        raise ConfigError("give --handler or --database-url, not both")
    source = _sql_source(database_url, models_path)
    try:
        models = source.prepare()
    except OperationalError as error:
        click.echo(f"FAIL  database: {describe_database_error(error)}")
        click.echo("      what to check: the URL's host, port, user and database; is it running?")
        sys.exit(EX_UNAVAILABLE)
    finally:
        source.close()
    served = sorted({model.name for model in models.values()})
    click.echo(
        f"ok    database: {source.engine.url.render_as_string(hide_password=True)} "
        f"(ledger and outbox present; models: {', '.join(served)})"
    )


# ---------------------------------------------------------------- migrate


@main.command("migrate")
@_setting(
    "--database-url",
    "ABLO_DATABASE_URL",
    required=True,
    metavar="URL",
    help="The database to prepare (sqlite:///app.db, postgresql://…).",
)
def migrate_command(database_url: str) -> None:
    """Create the idempotency ledger and the outbox (safe to run again).

    Creates ablo_idempotency and ablo_outbox with the same names and columns
    as the engine's own migrations, and adds columns an older ledger lacks.
    Your own tables are never touched. Exit 69 when the database cannot be
    reached, 78 for a bad URL.
    """
    from sqlalchemy.exc import DBAPIError, OperationalError

    from .adapters.sql import create_database_engine, describe_database_error, migrate

    configure_logging("warning")
    try:
        engine = create_database_engine(database_url)
    except ConfigError as error:
        _fail(str(error))
    shown = engine.url.render_as_string(hide_password=True)
    try:
        created = migrate(engine)
    except OperationalError as error:
        _fail(f"cannot reach {shown}: {describe_database_error(error)}", EX_UNAVAILABLE)
    except DBAPIError as error:
        _fail(f"migration failed on {shown}: {describe_database_error(error)}", 1)
    finally:
        engine.dispose()
    if created:
        click.echo(f"{shown}: created {', '.join(created)}")
    else:
        click.echo(f"{shown}: ablo_idempotency and ablo_outbox already present (checked)")


# ---------------------------------------------------------------- dev engine


@main.command("dev-engine")
@_setting("--host", default="127.0.0.1")
@_engine_ports
@_setting("--api-key", "ABLO_API_KEY", default=DEV_API_KEY, help="The key connectors must present.")
@_setting(
    "--request-timeout", type=_SECONDS, default=10.0, help="Seconds before a request is retried."
)
@_setting("--log-level", type=LOG_LEVELS, default="info")
def dev_engine(host: str, port: int, api_port: int, api_key: str, request_timeout: float, log_level: str) -> None:  # fmt: skip
    """Run a local engine for development and tests (no account, no cloud)."""
    from .devengine import DevEngine

    configure_logging(log_level, secrets=[api_key])

    async def serve() -> None:
        engine = DevEngine(
            api_key, host=host, port=port, api_port=api_port, request_timeout=request_timeout
        )
        try:
            await engine.start()
        except OSError as error:
            _fail(f"cannot listen on {host}:{port}/{api_port}: {error.strerror}", 1)
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
        _fail(
            f"cannot reach the engine at {engine}: {error.reason} (is `ablo-connector dev-engine` running?)",
            1,
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


engine_option = click.option("--engine", envvar="ABLO_DEV_ENGINE", show_envvar=True, default=DEFAULT_ENGINE_API, show_default=True, help="The dev engine's control API.")  # fmt: skip


@main.group()
def request() -> None:
    """Send one request through a running dev engine to your connector."""


@request.command("load")
@click.argument("model")
@click.argument("id")
@engine_option
def request_load(model: str, id: str, engine: str) -> None:
    """Load one row: MODEL ID."""
    _post(engine, {"type": "load", "model": model, "id": id})


@request.command("list")
@click.argument("model")
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Equality filter (repeatable); VALUE is JSON or a string.",
)
@click.option("--limit", type=click.IntRange(0))
@click.option("--order-by")
@click.option("--desc", is_flag=True)
@click.option("--cursor")
@engine_option
def request_list(model: str, where: tuple[str, ...], limit: int | None, order_by: str | None, desc: bool, cursor: str | None, engine: str) -> None:  # fmt: skip
    """List rows of MODEL."""
    conditions = []
    for item in where:
        field, sep, value = item.partition("=")
        if not sep or not field:
            _fail(f"--where {item!r} must look like field=value", 2)
        conditions.append([field, _parse_value(value)])
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
def request_commit(operation: str, model: str, id: str, input_json: str, correlation_id: str | None, engine: str) -> None:  # fmt: skip
    """Commit one operation: OPERATION MODEL ID [INPUT_JSON]."""
    import uuid

    try:
        data = json.loads(input_json)
    except ValueError:
        _fail('INPUT_JSON must be a JSON object, e.g. \'{"title": "x"}\'', 2)
    if not isinstance(data, dict):
        _fail("INPUT_JSON must be a JSON object", 2)
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
@click.option("--cursor")
@click.option("--limit", type=click.IntRange(0))
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
        _fail("BODY_JSON is not valid JSON", 2)
    _post(engine, body)


# ---------------------------------------------------------------- dev

DEMO_HANDLER = "examples.sqlite_source:SQLiteSource"
DEMO_REQUESTS: list[dict[str, Any]] = [
    {"type": "load", "model": "task", "id": "t1"},
    {"type": "list", "model": "task", "query": {"where": [["done", False]], "limit": 10}},
    {
        "type": "commit",
        "correlationId": "demo_commit_1",
        "operations": [{"type": "UPDATE", "model": "task", "id": "t1", "input": {"done": True}}],
    },
    {"type": "events", "limit": 5},
]


@main.command()
@_setting(
    "--handler",
    name="handler_spec",
    metavar="MODULE:ATTR",
    help=f"Your DataSource.  [default: {DEMO_HANDLER}]",
)
@_database_options
@_engine_ports
@_setting(
    "--exit-after-demo", is_flag=True, help="Stop after the demo requests instead of serving on."
)
@_setting("--log-level", type=LOG_LEVELS, default="info")
def dev(handler_spec: str | None, database_url: str | None, models_path: str | None, port: int, api_port: int, exit_after_demo: bool, log_level: str) -> None:  # fmt: skip
    """Run a local engine and the connector together, and show a few round trips.

    Uses the SQLite example by default: no account, no cloud. While it runs,
    try `ablo-connector request load task t1` in another terminal. With
    --database-url it serves your database instead (try
    `ablo-connector request list MODEL`).
    """

    formatter = configure_logging(log_level, secrets=[DEV_API_KEY])
    if not handler_spec and not database_url:
        handler_spec = DEMO_HANDLER
    try:
        source = _build_source(handler_spec, database_url, models_path, formatter)
    except ConfigError as error:
        _fail(str(error))
    demo = DEMO_REQUESTS if handler_spec == DEMO_HANDLER else []
    sys.exit(asyncio.run(_dev(source, port, api_port, exit_after_demo, demo)))


async def _dev(
    source: DataSource, port: int, api_port: int, exit_after_demo: bool, demo: list[dict[str, Any]]
) -> int:
    from .devengine import DevEngine

    engine = DevEngine(DEV_API_KEY, port=port, api_port=api_port)
    try:
        await engine.start()
    except OSError as error:
        _fail(
            f"cannot listen on 127.0.0.1:{port}/{api_port}: {error.strerror} (try --port/--api-port)",
            1,
        )
    connector = Connector(Config(api_key=DEV_API_KEY, base_url=engine.base_url), source)
    serving = asyncio.ensure_future(run_until_signalled(connector))
    try:
        await asyncio.wait_for(connector.wait_ready(), 15)
        for body in demo:
            result = await engine.request(body)
            click.echo(f"\n→ {json.dumps(body)}\n← HTTP {result.status} {result.body}")
        if exit_after_demo:
            connector.stop()
        else:
            example = "load task t1" if demo else "list MODEL"
            click.echo(
                f"\nServing. Try: ablo-connector request {example} --engine {engine.api_url}"
                "\nCtrl-C to stop.",
                err=True,
            )
        return await serving
    finally:
        await engine.close()
