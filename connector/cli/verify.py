"""``ablo-connector verify``: does this source keep the engine's guarantees?"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import EX_FAILURE, EX_INTERRUPTED, EX_UNAVAILABLE, ConfigError
from ..ops.logs import configure_logging
from .options import GroupedCommand, env_file_option, fail, option
from .sources import (
    check_source_choice,
    django_option,
    django_settings_of,
    guard_url_options,
    pool_size_option,
    source_options,
)

if TYPE_CHECKING:
    from ..serve.datasource import DataSource
    from ..verify import FieldSpec, Outcome, Report

__all__ = ["verify"]

_USAGE = 2


def _names(values: tuple[str, ...]) -> list[str]:
    """``--only a,b --only c`` → ``["a", "b", "c"]``."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@click.command(
    cls=GroupedCommand,
    short_help="Check that a source keeps the engine's guarantees (it writes rows).",
)
@env_file_option
@source_options(
    "The DataSource to check: a subclass, instance or factory.",
    "Check the SQL adapter over this database. verify writes rows: give a test database.",
)
@django_option
@pool_size_option
@option(
    "--model",
    group="source",
    metavar="NAME",
    help="The model to write. Default: the handler's first declared model, else 'task'; "
    "with --database-url, the first table the kit can write.",
)
@option(
    "--field",
    "fields",
    group="source",
    multiple=True,
    metavar="NAME=KIND",
    help="A field to write (repeatable), KIND one of text, integer, number, boolean, "
    "timestamp, date, uuid, json. One text field is needed; an integer field adds the "
    "numeric checks. Default for a handler: title=text, priority=integer.",
)
@option(
    "--only",
    multiple=True,
    metavar="CHECK[,CHECK]",
    help="Run only these checks (repeatable; --list-checks names them).",
)
@option("--skip", multiple=True, metavar="CHECK[,CHECK]", help="Leave these checks out.")
@option("--json", "as_json", is_flag=True, help="Print one JSON object (for CI) instead of lines.")
@option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=25.0,
    metavar="SECONDS",
    help="The connector's deadline for one request, as for run.",
)
@option(
    "--allow-any-database",
    is_flag=True,
    help="Write to a --database-url whose name does not look like a test database's.",
)
@option("--keep-rows", is_flag=True, help="Leave the rows written in place (to inspect them).")
@option("--list-checks", is_flag=True, help="List the checks and what each one proves, then exit.")
@option(
    "--log-level",
    group="logging",
    type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False),
    default="critical",
    help="The connector's logs (the handler's errors come back in the answers anyway).",
)
@click.pass_context
def verify(
    ctx: click.Context,
    /,
    handler_spec: str | None,
    database_url: str | None,
    models_path: str | None,
    django_settings: str | None,
    pool_size: int | None,
    model: str | None,
    fields: tuple[str, ...],
    only: tuple[str, ...],
    skip: tuple[str, ...],
    as_json: bool,
    request_timeout: float,
    allow_any_database: bool,
    keep_rows: bool,
    list_checks: bool,
    log_level: str,
) -> None:
    """Prove that a source keeps the guarantees the engine relies on.

    Serves the source (--handler, --database-url for the SQL adapter, or
    --django for a Django project's models) to a
    local engine in this process and sends it what the engine sends, over
    the real path: signed requests on a WebSocket, the connector's
    dispatcher, the source. Each check prints PASS or FAIL; a FAIL says what
    was sent, what came back, what the engine expects and what to change.

    It writes rows (ids and text under a prefix of its own) and deletes them
    when done; it refuses a database (--database-url, or the Django
    project's default one) that does not look like a test database unless
    --allow-any-database.

    Exit 0 when every check passes, 1 when one fails, 2 for a usage mistake,
    69 when the database cannot be reached, 78 for a configuration mistake.
    """
    from ..verify import (
        CHECKS,
        parse_field,
        plan_for,
        select_checks,
        served_operations,
        verify_source,
    )
    from ..verify.report import header_lines, outcome_lines, summary_line

    if list_checks:
        for item in CHECKS:
            click.echo(f"{item.name}: {item.guarantee}")
            click.echo(f"    needs: {', '.join(sorted(item.needs | item.needs_any)) or 'nothing'}")
            click.echo(f"    documented: {item.documented}")
        return
    try:
        parsed: list[FieldSpec] = [parse_field(text) for text in fields]
        checks = select_checks(_names(only), _names(skip))
    except (ValueError, ConfigError) as error:
        fail(f"{'--field ' if isinstance(error, ValueError) else ''}{error}", _USAGE)

    formatter = configure_logging(log_level)
    # The command's own warnings (a password typed where `ps` shows it) whatever the level.
    logging.getLogger("connector.cli").setLevel(min(logging.WARNING, logging.getLogger().level))

    def say(text: str, *, err: bool = False) -> None:
        click.echo(formatter.redact(text), err=err)

    source: DataSource | None = None
    try:
        guard_url_options(ctx, formatter.add_secret)
        django_settings = django_settings_of(handler_spec, database_url, django_settings)
        check_source_choice(ctx, handler_spec, database_url, models_path, django_settings)
        if django_settings:
            source, shown = _django_source(
                django_settings, allow_any_database, formatter.add_secret
            )
        elif database_url:
            source, shown = _database_source(
                database_url, models_path, pool_size, allow_any_database, formatter.add_secret
            )
        elif handler_spec:
            source, shown = _handler_source(handler_spec), handler_spec
        else:
            raise ConfigError(
                "say what to verify: --handler package.module:ClassName, --database-url URL, "
                "or --django mysite.settings"
            )
        plan = plan_for(source, model, parsed)
    except ConfigError as error:
        _close(source)
        fail(formatter.redact(str(error)))
    for line in header_lines(shown, plan, served_operations(source)):
        say(line, err=as_json)

    def show(outcome: Outcome) -> None:
        if not as_json:
            for line in outcome_lines(outcome):
                say(line)

    interrupted = False

    async def run_then_close(source: DataSource) -> Report:
        # The first Ctrl-C stops the checks and still deletes the rows written;
        # a second one ends the command at once (Python's own SIGINT again).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def first_interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            loop.remove_signal_handler(signal.SIGINT)
            say("interrupted: deleting the rows written (Ctrl-C again to leave them)", err=True)
            stop.set()

        loop.add_signal_handler(signal.SIGINT, first_interrupt)
        try:
            return await verify_source(
                source,
                plan,
                checks,
                request_timeout=request_timeout,
                on_outcome=show,
                keep_rows=keep_rows,
                stop=stop,
            )
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            if _is_adapter(source):
                await source.aclose()  # type: ignore[attr-defined]

    try:
        report = asyncio.run(run_then_close(source))
    except ConfigError as error:
        fail(formatter.redact(str(error)))
    if as_json:
        say(json.dumps(report.to_json(), ensure_ascii=False))
    say(summary_line(report), err=as_json)
    sys.exit(EX_INTERRUPTED if interrupted else EX_FAILURE if report.failed else 0)


def _handler_source(handler_spec: str) -> DataSource:
    from ..serve.loader import handler_problems, load_handler

    source = load_handler(handler_spec)
    problems = handler_problems(source)
    if problems:
        raise ConfigError(f"handler {handler_spec}: " + "; ".join(problems))
    return source


def _database_source(
    database_url: str,
    models_path: str | None,
    pool_size: int | None,
    allow_any_database: bool,
    add_secret: Callable[[str], None],
) -> tuple[DataSource, str]:
    from sqlalchemy.exc import OperationalError

    from ..adapters.sql import describe_database_error, shown_url
    from .sources import sql_source

    source = sql_source(database_url, models_path, add_secret, pool_size)
    shown = shown_url(source.engine.url)
    url = source.engine.url
    name = Path(url.database or "").name if url.get_backend_name() == "sqlite" else url.database
    try:
        _refuse_unless_test_database(name or "", shown, allow_any_database)
    except ConfigError:
        source.close()
        raise
    try:
        source.prepare()
    except OperationalError as error:
        source.close()
        fail(f"database: {describe_database_error(error)}", EX_UNAVAILABLE)
    return source, shown


def _refuse_unless_test_database(name: str, shown: str, allow_any_database: bool) -> None:
    from ..verify.plan import looks_like_test_database

    if not allow_any_database and not looks_like_test_database(name):
        raise ConfigError(
            f"verify writes rows, and the database {name!r} ({shown}) does not look like a "
            "test database (its name holds neither 'test' nor 'verify', nor a word dev, ci, "
            "tmp, temp, scratch or sandbox); point it at one, or pass --allow-any-database to "
            "write there anyway"
        )


def _django_source(
    settings_module: str, allow_any_database: bool, add_secret: Callable[[str], None]
) -> tuple[DataSource, str]:
    from .sources import django_source

    source = django_source(settings_module, add_secret)
    from django.db import connections  # set up by django_source

    from ..adapters.django.settings import served_database

    database = connections[served_database()].settings_dict  # the alias served
    name = str(database.get("NAME") or "")
    if database.get("ENGINE", "").endswith("sqlite3"):
        name = Path(name).name
    try:
        _refuse_unless_test_database(name, f"Django project {settings_module}", allow_any_database)
    except ConfigError:
        _close(source)
        raise
    return source, f"Django project {settings_module}"


def _is_adapter(source: DataSource | None) -> bool:
    """A source the command built (a handler's resources are its own)."""
    from ..adapters.sql import SQLSource

    if isinstance(source, SQLSource):
        return True
    # Loaded only when a Django project was asked for (Django is an optional extra).
    django = sys.modules.get("connector.adapters.django.source")
    return django is not None and isinstance(source, django.DjangoSource)


def _close(source: DataSource | None) -> None:
    """Drop the SQL adapter's connections (a handler's resources are its own)."""
    if _is_adapter(source):
        source.close()  # type: ignore[union-attr]
