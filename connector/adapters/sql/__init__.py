"""Serve SQL tables (SQLite, PostgreSQL, MySQL, MariaDB) as an Ablo Data Source, with no code.

    from connector.adapters.sql import ModelMap, SQLSource

    source = SQLSource("postgresql://app@db/app", ModelMap.from_toml("models.toml"))

or ``SQLSource(url, models=Base)`` with the application's SQLAlchemy declarative
base; from the command line, ``ablo-connector run --database-url URL [--models
FILE|MODULE[:BASE]]``.
Create the ledger and outbox once with ``ablo-connector migrate --database-url URL``.
"""

from .answers import describe_database_error
from .capture import migrate_capture
from .declared import load_model_map
from .engines import (
    configuration_problem,
    create_database_engine,
    database_url,
    lacks_privilege,
    no_grants_note,
    print_sql_note,
    shown_url,
)
from .models import ModelMap, ModelSpec, ServedModel, camel_to_snake, snake_to_camel
from .reflection import served_tables
from .schema import grant_statements, migrate, migration_statements
from .source import DEFAULT_POOL_SIZE, SQLSource

__all__ = [
    "DEFAULT_POOL_SIZE",
    "ModelMap",
    "ModelSpec",
    "SQLSource",
    "ServedModel",
    "camel_to_snake",
    "configuration_problem",
    "create_database_engine",
    "database_url",
    "describe_database_error",
    "grant_statements",
    "lacks_privilege",
    "load_model_map",
    "migrate",
    "migrate_capture",
    "migration_statements",
    "no_grants_note",
    "print_sql_note",
    "served_tables",
    "shown_url",
    "snake_to_camel",
]
