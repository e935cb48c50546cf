"""Which database, through which driver? URLs and engines, each by its dialect."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ..._redact import redact_url
from .dialects import dialect_of_url

__all__ = [
    "configuration_problem",
    "create_database_engine",
    "database_url",
    "lacks_privilege",
    "no_grants_note",
    "print_sql_note",
    "shown_url",
]


def shown_url(url: sa.URL) -> str:
    """The URL as an operator may see it: no password, in its userinfo or its query."""
    return redact_url(url.render_as_string(hide_password=True))


def database_url(url: str | sa.URL) -> sa.URL:
    """Parse a database URL, with the driver the adapter serves its database through
    (psycopg 3 for ``postgresql://``/``postgres://``)."""
    return dialect_of_url(url)[1]


def create_database_engine(
    url: str | sa.URL,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
    statement_timeout: float | None = 30.0,
    must_exist: bool = False,
) -> sa.Engine:
    """A synchronous engine with the settings the adapter relies on.

    ``must_exist`` refuses a SQLite file that is not there (SQLite would
    create an empty one). :class:`SQLSource` serves through its own engines
    instead; this one is for ``migrate``, scripts and tests.
    """
    dialect, parsed = dialect_of_url(url)
    return dialect.create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        statement_timeout=statement_timeout,
        must_exist=must_exist,
    )


def configuration_problem(error: sa_exc.OperationalError, url: sa.URL) -> str | None:
    """A connection failure that waiting will not cure, as one line, or None.

    The one place that tells a refused login, an unknown user or database
    (exit 78, a configuration mistake, for ``run``, ``migrate`` and
    ``check`` alike) from a database that cannot be reached right now.
    """
    dialect, _ = dialect_of_url(url)
    return dialect.configuration_problem(error, url)


def lacks_privilege(error: sa_exc.DBAPIError, url: sa.URL) -> bool:
    """Whether the database at ``url`` refused a statement for want of a privilege."""
    dialect, _ = dialect_of_url(url)
    return dialect.lacks_privilege(error.orig)


def no_grants_note(url: sa.URL) -> str | None:
    """What ``migrate --print-grants`` says where the database has no GRANTs, or None."""
    dialect, _ = dialect_of_url(url)
    return dialect.no_grants_note


def print_sql_note(url: sa.URL) -> str:
    """What ``migrate --print-sql`` says first: who runs the DDL, and where."""
    dialect, _ = dialect_of_url(url)
    return dialect.print_sql_note
