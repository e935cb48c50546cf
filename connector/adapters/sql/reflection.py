"""Which models can be served as their tables stand? Reflection, once per start
and again after a served table changed."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ...errors import ConfigError
from .declared import apply_declared_defaults
from .dialects import Dialect, dialect_named
from .models import IdNotUnique, ModelMap, ModelSpec, ServedModel

__all__ = ["reflect_models", "served_tables"]


def reflect_models(
    connection: sa.Connection,
    specs: Mapping[str, ModelSpec],
    dialect: Dialect,
    *,
    skip_without_id: bool,
) -> tuple[dict[str, ServedModel], dict[str, str], dict[str, str]]:
    """Each model of ``specs`` as its table stands: the served ones, why the
    others cannot be served, and (``skip_without_id``: every table by name,
    no map) the tables skipped for having no unique id column, with why."""
    metadata = sa.MetaData()
    served: dict[str, ServedModel] = {}
    problems: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name, spec in specs.items():
        where = f"{spec.schema}.{spec.table}" if spec.schema else spec.table
        try:
            table = sa.Table(spec.table, metadata, schema=spec.schema, autoload_with=connection)
            if skip_without_id and "id" not in table.columns:
                skipped[spec.table] = "no id column"
                continue
            dialect.adapt_reflected(connection, table)
            if spec.declared is not None:
                apply_declared_defaults(spec.declared, table)
            served[name] = ServedModel.reflect(name, spec, table, dialect)
        except IdNotUnique as error:
            if not skip_without_id:
                problems[name] = str(error)
            else:
                skipped[spec.table] = "an id column not unique by itself"
        except sa_exc.NoSuchTableError:
            problems[name] = f"model {name!r}: table {where!r} does not exist"
        except ConfigError as error:
            problems[name] = str(error)
        except sa_exc.OperationalError as error:
            problem = dialect.reflection_problem(error, name, spec.schema)
            if problem is None:
                raise
            problems[name] = problem
    return served, problems, skipped


def served_tables(connection: sa.Connection, models: ModelMap | None) -> list[sa.Table]:
    """The tables ``run`` would serve with ``models`` (every table with an id
    column without them), whether or not the ledger and outbox exist yet; a
    ConfigError names a map ``run`` would refuse."""
    dialect = dialect_named(connection.dialect.name)
    specs = models or ModelMap.of_tables(sa.inspect(connection).get_table_names())
    served, problems, _ = reflect_models(connection, specs, dialect, skip_without_id=models is None)
    if problems:
        raise ConfigError(next(iter(problems.values())))
    return [model.table for model in served.values()]
