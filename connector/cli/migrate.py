"""``ablo-connector migrate``: prepare a database for the SQL adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import click

from ..errors import EX_FAILURE, EX_UNAVAILABLE, ConfigError
from ..ops.logs import configure_logging
from .options import GroupedCommand, env_file_option, fail, option
from .sources import guard_url_options, sql_source

if TYPE_CHECKING:
    from sqlalchemy import URL, Engine
    from sqlalchemy.exc import OperationalError

__all__ = ["migrate"]


@click.command(
    cls=GroupedCommand, short_help="Create or upgrade the SQL adapter's ledger and outbox."
)
@env_file_option
@option(
    "--database-url",
    group="source",
    env="ABLO_DATABASE_URL",
    metavar="URL",
    help="The database to prepare (sqlite:///app.db, postgresql://…, mysql://…).",
)
@option(
    "--django",
    "django_settings",
    group="source",
    env="ABLO_DJANGO",
    metavar="SETTINGS",
    help="With --capture or --remove-capture: install or remove the capture of the models "
    "settings.ABLO names in this Django project (mysite.settings), on its ABLO database "
    "(`python manage.py migrate` creates the ledger and outbox).",
)
@option(
    "--models",
    "models_path",
    group="source",
    env="ABLO_MODELS",
    type=click.Path(dir_okay=False),
    help="The model map run will serve, checked too. Default: every table with an id, by name.",
)
@option(
    "--print-sql",
    group="source",
    is_flag=True,
    help="Print the statements that create the ledger and outbox, and change nothing "
    "(for an owner to run them).",
)
@option(
    "--print-grants",
    "grants_for",
    group="source",
    metavar="ROLE",
    help="Print the GRANTs ROLE needs to serve the models (PostgreSQL, MySQL: ROLE or "
    "ROLE@HOST), and change nothing. "
    "Connects as the URL's user, which needs no privilege beyond reading the catalog.",
)
@option(
    "--capture",
    group="source",
    is_flag=True,
    help="Also install the triggers that record every write to the served tables (the "
    "application's own too) in the outbox, or bring them up to date; a model whose map "
    "says capture = false is left out. With --print-sql: print that DDL instead.",
)
@option(
    "--remove-capture",
    group="source",
    is_flag=True,
    help="Remove every capture trigger migrate --capture installed, and change nothing else.",
)
@click.pass_context
def migrate(
    ctx: click.Context,
    /,
    database_url: str | None,
    django_settings: str | None,
    models_path: str | None,
    print_sql: bool,
    grants_for: str | None,
    capture: bool,
    remove_capture: bool,
) -> None:
    """Create the idempotency ledger and the outbox (safe to run again).

    Creates ablo_idempotency and ablo_outbox with the same names and columns
    as the engine's own migrations, in the first schema of the user's
    search_path (MySQL: in the URL's database), adds columns an older ledger or outbox lacks (printing each
    change), then makes the check `run` makes, with the same --models: a
    migrate that succeeds means run accepts the database. Your own tables
    are never touched. Exit 69 when the database cannot be reached, 78 for a
    bad URL, a login the database refuses, a user that may not create tables,
    a missing SQLite file, a table it cannot complete or a model map run
    would refuse.

    A user that may not create tables (the connector's own, with the least
    privileges) cannot run it the first time: run it once as the tables'
    owner, or give the owner the output of --print-sql; --print-grants ROLE
    then prints what the connector's user needs.
    """
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError, OperationalError

    from ..adapters.sql import (
        create_database_engine,
        describe_database_error,
        lacks_privilege,
        load_model_map,
        migrate_capture,
        shown_url,
    )
    from ..adapters.sql import migrate as migrate_tables
    from ..adapters.sql.capture import require_capture
    from ..adapters.sql.dialects import dialect_named
    from ..adapters.sql.models import INFRASTRUCTURE_TABLES

    formatter = configure_logging("warning")
    if print_sql and grants_for is not None:
        fail("give --print-sql or --print-grants, not both")
    if capture and remove_capture:
        fail("give --capture or --remove-capture, not both")
    try:
        guard_url_options(ctx, formatter.add_secret)
    except ConfigError as error:
        fail(str(error))
    if django_settings:
        if database_url:
            fail("give --database-url or --django, not both")
        if not (capture or remove_capture) or print_sql or grants_for or models_path:
            fail(
                "--django takes --capture or --remove-capture only (`python manage.py migrate` "
                "creates the ledger and outbox)"
            )
        _migrate_django(django_settings, remove_capture, formatter.add_secret)
        return
    if not database_url:
        fail("say which database: --database-url URL (or --django SETTINGS --capture)")
    if print_sql and remove_capture:
        fail("--print-sql prints what --capture installs; --remove-capture prints nothing")
    if print_sql and not capture:
        _print_sql(database_url)
        return
    try:
        engine = create_database_engine(database_url, must_exist=True)
    except ConfigError as error:
        fail(str(error))
    shown = shown_url(engine.url)
    if grants_for is not None:
        _print_grants(engine, models_path, grants_for)
        return
    if print_sql:
        _print_capture_sql(engine, models_path)
        return
    try:
        # What would stop the command is found before the ledger and outbox
        # are touched: a map or classes it cannot read, capture it cannot do.
        models = load_model_map(models_path) if models_path else None
        if capture or remove_capture:
            require_capture(dialect_named(engine.dialect.name))
        try:
            engine.connect().close()
        except OperationalError as error:
            # A login refused, or a database missing or closed to this user,
            # is said as such, not as a privilege to create tables.
            _unreachable(f"{shown}: ", error, engine.url)
        changes = migrate_tables(engine)
        if capture or remove_capture:
            changes += migrate_capture(engine, models, remove=remove_capture)
        tables = set(sa.inspect(engine).get_table_names()) - INFRASTRUCTURE_TABLES
    except ConfigError as error:
        fail(f"{shown}: {error}")
    except DBAPIError as error:
        # Before an outage: MySQL's drivers raise a missing privilege as an
        # OperationalError.
        if lacks_privilege(error, engine.url):
            fail(
                f"{shown}: {describe_database_error(error)}: this user may not create the "
                "ledger and outbox; run migrate once as the tables' owner (or have the owner "
                "run the statements of `ablo-connector migrate --print-sql`), then grant this "
                "user what `ablo-connector migrate --print-grants ROLE` prints"
            )
        if isinstance(error, OperationalError):
            _unreachable(f"{shown}: ", error, engine.url)
        fail(f"migration failed on {shown}: {describe_database_error(error)}", EX_FAILURE)
    finally:
        engine.dispose()
    for change in changes:
        click.echo(f"{shown}: {change}")
    click.echo(f"{shown}: ablo_idempotency and ablo_outbox are up to date")
    if not tables and not models_path:
        click.echo(f"{shown}: no table to serve yet: run serves the tables you create next")
        return
    served = _served_models(database_url, models_path, formatter.add_secret)
    click.echo(f"{shown}: run will serve {', '.join(served)}")


def _migrate_django(settings: str, remove: bool, add_secret: Callable[[str], None]) -> None:
    """``migrate --django SETTINGS --capture`` (or ``--remove-capture``)."""
    from sqlalchemy.exc import DBAPIError

    from ..adapters.sql import describe_database_error
    from .sources import django_project

    try:
        models, unreachable = django_project(settings, add_secret)
        if unreachable is not None:
            fail(str(unreachable), EX_UNAVAILABLE)
        from ..adapters.django.capture import migrate_capture
        from ..adapters.django.settings import served_database

        alias = served_database()
        changes = migrate_capture(models, alias, remove=remove)
    except ConfigError as error:
        fail(str(error))
    except DBAPIError as error:
        fail(f"capture failed: {describe_database_error(error)}", EX_FAILURE)
    for change in changes:
        click.echo(f"Django database {alias!r}: {change}")
    if not changes:
        click.echo(f"Django database {alias!r}: the capture is up to date")


def _served_models(
    database_url: str, models_path: str | None, add_secret: Callable[[str], None]
) -> list[str]:
    """The models run would serve, by the very check run makes; exits 78 if it would refuse."""
    from sqlalchemy.exc import OperationalError

    try:
        source = sql_source(database_url, models_path, add_secret)
    except ConfigError as error:
        fail(str(error))
    try:
        return sorted(source.prepare())
    except ConfigError as error:
        fail(f"the tables are ready, but run would refuse this database: {error}")
    except OperationalError as error:
        _unreachable("", error, source.engine.url)
    finally:
        source.close()


def _print_sql(database_url: str) -> None:
    """The statements migrate runs on a database that has neither table (no connection)."""
    from ..adapters.sql import database_url as parse_database_url
    from ..adapters.sql import migration_statements, print_sql_note

    try:
        url = parse_database_url(database_url)
    except ConfigError as error:
        fail(str(error))
    statements = migration_statements(url.get_backend_name())
    note = print_sql_note(url)
    click.echo(
        f"-- The SQL adapter's ledger and outbox, as `ablo-connector migrate` creates them;\n{note}"
    )
    for statement in statements:
        click.echo(f"{statement};")


def _print_capture_sql(engine: Engine, models_path: str | None) -> None:
    """The statements ``migrate --capture`` runs on a database without capture."""
    from sqlalchemy.exc import OperationalError

    from ..adapters.sql import load_model_map
    from ..adapters.sql.capture import capture_script

    try:
        models = load_model_map(models_path) if models_path else None
        lines = capture_script(engine, models)
    except ConfigError as error:
        fail(str(error))
    except OperationalError as error:
        _unreachable("", error, engine.url)
    finally:
        engine.dispose()
    click.echo(
        "-- The capture triggers, as `ablo-connector migrate --capture` installs them on a "
        "database without capture; run as the tables' owner, after the ledger and outbox exist."
    )
    for line in lines:
        click.echo(line)


def _print_grants(engine: Engine, models_path: str | None, role: str) -> None:
    """The GRANTs ``role`` needs for the models run would serve (none on SQLite)."""
    from sqlalchemy.exc import OperationalError

    from ..adapters.sql import grant_statements, load_model_map, no_grants_note, served_tables

    note = no_grants_note(engine.url)
    if note is not None:
        engine.dispose()
        click.echo(note)
        return
    try:
        models = load_model_map(models_path) if models_path else None
        with engine.connect() as connection:
            tables = served_tables(connection, models)
            statements = grant_statements(connection, role, tables)
    except ConfigError as error:
        fail(str(error))
    except OperationalError as error:
        _unreachable("", error, engine.url)
    finally:
        engine.dispose()
    click.echo(
        f"-- What {role} needs to serve {len(tables)} table(s) with the ledger and outbox; "
        "run as their owner."
    )
    for statement in statements:
        click.echo(statement)


def _unreachable(where: str, error: OperationalError, url: URL) -> NoReturn:
    """Exit 78 for a login the database refused (as ``run`` does), else 69."""
    from ..adapters.sql import configuration_problem, describe_database_error

    problem = configuration_problem(error, url)
    if problem is not None:
        fail(f"{where}{problem}")
    fail(f"{where}cannot reach the database: {describe_database_error(error)}", EX_UNAVAILABLE)
