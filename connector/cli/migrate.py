"""``ablo-connector migrate``: prepare a database for the SQL adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import click

from .._redact import has_password
from ..errors import EX_FAILURE, EX_UNAVAILABLE, ConfigError
from ..ops.logs import configure_logging
from .options import GroupedCommand, env_file_option, fail, on_command_line, option
from .sources import guard_url, sql_source

if TYPE_CHECKING:
    from sqlalchemy import URL
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
    required=True,
    metavar="URL",
    help="The database to prepare (sqlite:///app.db, postgresql://…).",
)
@option(
    "--models",
    "models_path",
    group="source",
    env="ABLO_MODELS",
    type=click.Path(dir_okay=False),
    help="The model map run will serve, checked too. Default: every table with an id, by name.",
)
@click.pass_context
def migrate(ctx: click.Context, /, database_url: str, models_path: str | None) -> None:
    """Create the idempotency ledger and the outbox (safe to run again).

    Creates ablo_idempotency and ablo_outbox with the same names and columns
    as the engine's own migrations, in the first schema of the user's
    search_path, adds columns an older ledger or outbox lacks (printing each
    change), then makes the check `run` makes, with the same --models: a
    migrate that succeeds means run accepts the database. Your own tables
    are never touched. Exit 69 when the database cannot be reached, 78 for a
    bad URL, a login the database refuses, a missing SQLite file, a table it
    cannot complete or a model map run would refuse.
    """
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError, OperationalError

    from ..adapters.sql import create_database_engine, describe_database_error, shown_url
    from ..adapters.sql import migrate as migrate_tables

    formatter = configure_logging("warning")
    try:
        guard_url(database_url, "--database-url", formatter.add_secret)
        if has_password(database_url) and on_command_line(ctx, "database_url"):
            click.echo(
                "ablo-connector: warning: the database password was given on the command "
                "line, where other local users can see it in the process list; prefer "
                "ABLO_DATABASE_URL",
                err=True,
            )
        engine = create_database_engine(database_url, must_exist=True)
    except ConfigError as error:
        fail(str(error))
    shown = shown_url(engine.url)
    try:
        changes = migrate_tables(engine)
        tables = set(sa.inspect(engine).get_table_names()) - {"ablo_idempotency", "ablo_outbox"}
    except ConfigError as error:
        fail(f"{shown}: {error}")
    except OperationalError as error:
        _unreachable(f"{shown}: ", error, engine.url)
    except DBAPIError as error:
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


def _unreachable(where: str, error: OperationalError, url: URL) -> NoReturn:
    """Exit 78 for a login the database refused (as ``run`` does), else 69."""
    from ..adapters.sql import configuration_problem, describe_database_error

    problem = configuration_problem(error, url)
    if problem is not None:
        fail(f"{where}{problem}")
    fail(f"{where}cannot reach the database: {describe_database_error(error)}", EX_UNAVAILABLE)
