"""``ablo-connector run`` and ``check``: what an operator types on a server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import sys
from collections.abc import Callable
from typing import Any

import click

from ..daemon.signals import run_until_signalled
from ..daemon.supervisor import Connector
from ..errors import EX_CONFIG, EX_UNAVAILABLE, CheckFailed, ConfigError
from ..ops.logs import configure_logging
from .options import (
    GroupedCommand,
    config_options,
    env_file_option,
    fail,
    from_command_line,
    guard_inspector_token,
    key_options,
    logging_options,
    option,
    resolve_api_key,
)
from .sources import (
    build_source,
    check_source_choice,
    django_option,
    django_project,
    django_settings_of,
    guard_url_options,
    outbox_retention_option,
    pool_size_option,
    source_options,
    sql_source,
)

__all__ = ["check", "run"]

log = logging.getLogger("connector.cli")


def _no_core_dumps() -> None:
    """A core file of a running connector holds the key (and any database password)."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@click.command(cls=GroupedCommand)
@env_file_option
@source_options("Your DataSource: a subclass, instance or factory.")
@django_option
@pool_size_option
@outbox_retention_option
@key_options
@config_options()
@logging_options
@click.pass_context
def run(
    ctx: click.Context,
    /,
    handler_spec: str | None,
    database_url: str | None,
    models_path: str | None,
    django_settings: str | None,
    pool_size: int | None,
    outbox_retention: str | None,
    api_key: str | None,
    api_key_file: str | None,
    log_level: str,
    log_format: str,
    **settings: Any,
) -> None:
    """Dial the engine and serve your Data Source until stopped.

    Serve your own handler (--handler), tables of a database with no code
    at all (--database-url, optionally --models), or a Django project's
    models (--django mysite.settings).

    SIGTERM or SIGINT finishes in-flight requests (up to --shutdown-grace),
    then exits 0; a second signal exits at once with 1. Exit 78: a
    configuration problem, or a rejected key with --exit-on-auth-failure.
    """
    formatter = configure_logging(log_level, "json" if log_format == "json" else "text")
    _no_core_dumps()
    try:
        guard_url_options(ctx, formatter.add_secret)
        key = resolve_api_key(ctx, api_key, api_key_file, warn=log.warning)
        formatter.add_secret(key)
        config = from_command_line(key, settings)
        guard_inspector_token(ctx, config, formatter.add_secret, warn=log.warning)
        source = build_source(
            ctx,
            handler_spec,
            database_url,
            models_path,
            add_secret=formatter.add_secret,
            pool_size=pool_size,
            outbox_retention=outbox_retention,
            django_settings=django_settings_of(handler_spec, database_url, django_settings),
        )
        connector = Connector(config, source)
    except ConfigError as error:
        fail(str(error))
    formatter.show_source_of(connector.status)
    sys.exit(asyncio.run(run_until_signalled(connector)))


@click.command(cls=GroupedCommand)
@env_file_option
@source_options(
    "Also check that the handler imports and can serve.",
    "Also check this database: it answers, has the ledger and outbox, and which models it "
    "would serve.",
)
@django_option
@key_options
@config_options(only={"base_url", "allow_insecure", "open_timeout"})
@option(
    "--register/--no-register",
    group="engine",
    default=False,
    help="Also register and wait for ready, which takes the source from a connector already "
    "serving it (it stands down for --superseded-backoff). Default: stop after the upgrade.",
)
@click.pass_context
def check(
    ctx: click.Context,
    /,
    handler_spec: str | None,
    database_url: str | None,
    models_path: str | None,
    django_settings: str | None,
    api_key: str | None,
    api_key_file: str | None,
    register: bool,
    **settings: Any,
) -> None:
    """Diagnose the path to the engine, one step at a time.

    Checks the configuration, the handler or the database, proxy, DNS, TCP,
    TLS, the WebSocket upgrade with the key and the echoed subprotocol: every
    step up to the one that would displace a running connector, so it is
    safe beside the service. --register also registers and prints the source
    the engine resolved, which takes the source from a connector already
    serving it: use it before the service starts. Without an API key it
    checks only the handler or the database.

    Exit 0 when every step passes, 69 when the engine or the database cannot
    be reached, 78 for a configuration or credential problem.
    """
    from .check import run_checks

    formatter = configure_logging("warning")

    def say(text: str) -> None:
        click.echo(formatter.redact(text))

    try:
        guard_url_options(ctx, formatter.add_secret)
        django_settings = django_settings_of(handler_spec, database_url, django_settings)
        check_source_choice(ctx, handler_spec, database_url, models_path, django_settings)
        local_only = not (api_key or api_key_file) and bool(
            handler_spec or database_url or django_settings
        )
        config = None
        if not local_only:
            key = resolve_api_key(ctx, api_key, api_key_file, warn=log.warning)
            formatter.add_secret(key)
            config = from_command_line(key, settings)
        if handler_spec:
            _check_handler(handler_spec, say)
        if database_url:
            _check_database(database_url, models_path, say, formatter.add_secret)
        if django_settings:
            _check_django(django_settings, say, formatter.add_secret)
    except ConfigError as error:
        say(f"FAIL  configuration: {error}")
        sys.exit(EX_CONFIG)
    if config is None:
        say("skip  engine: no API key (set ABLO_API_KEY to check the path to the engine)")
    else:
        try:
            asyncio.run(run_checks(config, say, register=register))
        except CheckFailed as failure:
            say(f"FAIL  {failure.step}: {failure.detail}")
            say(f"      what to check: {failure.hint}")
            sys.exit(failure.exit_status)
    say("all checks passed")


def _check_handler(handler_spec: str, say: Callable[[str], None]) -> None:
    from ..serve.datasource import overridden
    from ..serve.loader import handler_problems, load_handler
    from ..wire.bodies import OPERATIONS

    source = load_handler(handler_spec)
    problems = handler_problems(source)
    if problems:
        for problem in problems:
            say(f"FAIL  handler: {problem}")
        sys.exit(EX_CONFIG)
    implemented = [op for op in OPERATIONS if overridden(source, op)]
    say(f"ok    handler: {handler_spec} ({type(source).__name__}: {', '.join(implemented)})")


def _check_django(
    settings_module: str, say: Callable[[str], None], add_secret: Callable[[str], None]
) -> None:
    models, unreachable = django_project(settings_module, add_secret)
    if unreachable is not None:
        say(f"FAIL  database: {unreachable}")
        say("      what to check: DATABASES in the settings; is the database running?")
        sys.exit(EX_UNAVAILABLE)
    served = ", ".join(
        f"{name} ({model.model._meta.app_label}.{model.model.__name__})"
        for name, model in sorted(models.items())
    )
    say(f"ok    django: {settings_module} (ledger and outbox migrated; models: {served})")


def _check_database(
    database_url: str,
    models_path: str | None,
    say: Callable[[str], None],
    add_secret: Callable[[str], None],
) -> None:
    from sqlalchemy.exc import OperationalError

    from ..adapters.sql import describe_database_error, shown_url

    source = sql_source(database_url, models_path, add_secret)
    try:
        models = source.prepare()
    except OperationalError as error:
        source.close()
        say(f"FAIL  database: {describe_database_error(error)}")
        say("      what to check: the URL's host, port, user and database; is it running?")
        sys.exit(EX_UNAVAILABLE)
    except BaseException:
        source.close()
        raise
    from .check import describe_models, describe_plans

    served = sorted({model.name for model in models.values()})
    say(
        f"ok    database: {shown_url(source.engine.url)} "
        f"(ledger and outbox present; models: {', '.join(served)})"
    )
    for line in describe_models(models):
        say(line)

    async def read_plans() -> list[str]:
        try:
            return await describe_plans(source, models)
        finally:
            await source.aclose()

    for line in asyncio.run(read_plans()):
        say(line)
