"""``ablo-connector migrate``: prepare a database for the SQL adapter."""

from __future__ import annotations

import click

from ..errors import EX_FAILURE, EX_UNAVAILABLE, ConfigError
from ..ops.logs import configure_logging
from .options import GroupedCommand, env_file_option, fail, option
from .sources import guard_url

__all__ = ["migrate"]


@click.command(cls=GroupedCommand)
@env_file_option
@option(
    "--database-url",
    group="source",
    env="ABLO_DATABASE_URL",
    required=True,
    metavar="URL",
    help="The database to prepare (sqlite:///app.db, postgresql://…).",
)
def migrate(database_url: str) -> None:
    """Create the idempotency ledger and the outbox (safe to run again).

    Creates ablo_idempotency and ablo_outbox with the same names and columns
    as the engine's own migrations, adds columns an older ledger or outbox
    lacks (printing each change), then makes the check `run` makes: a
    migrate that succeeds means run accepts the database. Your own tables
    are never touched. Exit 69 when the database cannot be reached, 78 for a
    bad URL, a missing SQLite file or a table it cannot complete.
    """
    from sqlalchemy.exc import DBAPIError, OperationalError

    from ..adapters.sql import create_database_engine, describe_database_error, shown_url
    from ..adapters.sql import migrate as migrate_tables

    formatter = configure_logging("warning")
    try:
        guard_url(database_url, "--database-url", formatter.add_secret)
        engine = create_database_engine(database_url, must_exist=True)
    except ConfigError as error:
        fail(str(error))
    shown = shown_url(engine.url)
    try:
        changes = migrate_tables(engine)
    except ConfigError as error:
        fail(f"{shown}: {error}")
    except OperationalError as error:
        fail(f"cannot reach {shown}: {describe_database_error(error)}", EX_UNAVAILABLE)
    except DBAPIError as error:
        fail(f"migration failed on {shown}: {describe_database_error(error)}", EX_FAILURE)
    finally:
        engine.dispose()
    for change in changes:
        click.echo(f"{shown}: {change}")
    click.echo(f"{shown}: ablo_idempotency and ablo_outbox are up to date")
