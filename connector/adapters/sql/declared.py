"""Which models do the application's own SQLAlchemy classes declare?

``--models myapp.models:Base`` (a declarative base: every class mapped in
its registry; SQLModel's ``SQLModel`` is one), ``--models myapp.models``
(every class mapped in that module), or ``SQLSource(url, models=Base)``
take the model map from the classes instead of a TOML file:

- the model's name is the class attribute ``__ablo_model__``, else the
  class name with its leading capitals lowercased (``Task`` → ``task``,
  ``WorkItem`` → ``workItem``, ``HTTPLog`` → ``httpLog``); its typename is
  ``__ablo_typename__``, else the class name;
- its fields are the class's mapped column attributes, under their
  attribute names in camelCase (``due = mapped_column("due_at")`` is served
  as ``due``), less those named in ``__ablo_exclude__``; relationships,
  ``hybrid_property`` and ``column_property`` attributes are not served;
- its id is the single-column primary key, or the unique column whose
  attribute ``__ablo_id__`` names (a composite primary key needs one);
- the table's Python-side ``default=`` and ``onupdate=`` are applied to the
  adapter's writes as SQLAlchemy Core applies them to an ``insert()`` or
  ``update()`` of the class's table (see :func:`apply_declared_defaults`).

Tables are still reflected from the database: the classes say which columns
are served and under which names, the database what the columns hold.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import orm

from ...errors import ConfigError
from ...serve.loader import import_module
from .models import INFRASTRUCTURE_TABLES, ModelSpec, snake_to_camel

if TYPE_CHECKING:
    from .models import ModelMap

__all__ = [
    "EXCLUDE_ATTRIBUTE",
    "ID_ATTRIBUTE",
    "INCLUDE_ATTRIBUTE",
    "MODEL_ATTRIBUTE",
    "TYPENAME_ATTRIBUTE",
    "apply_declared_defaults",
    "class_model_name",
    "declared_specs",
    "import_classes",
    "is_declared",
    "load_model_map",
]

log = logging.getLogger("connector.sql")

MODEL_ATTRIBUTE: Final = "__ablo_model__"
TYPENAME_ATTRIBUTE: Final = "__ablo_typename__"
EXCLUDE_ATTRIBUTE: Final = "__ablo_exclude__"
INCLUDE_ATTRIBUTE: Final = "__ablo_include__"
ID_ATTRIBUTE: Final = "__ablo_id__"

_LEADING_CAPITALS: Final = re.compile(r"^[A-Z]+(?=[A-Z][a-z0-9]|$)|^[A-Z]")
_MODULE_SPEC: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)?"
)


def class_model_name(class_name: str) -> str:
    """``Task`` → ``task``, ``WorkItem`` → ``workItem``, ``HTTPLog`` → ``httpLog``:
    a class's model name when it does not set ``__ablo_model__``."""
    return _LEADING_CAPITALS.sub(lambda found: found.group(0).lower(), class_name, count=1)


def load_model_map(value: str) -> ModelMap:
    """What ``--models`` names: a TOML file (a path ending in ``.toml``, or one
    that exists, or holds a ``/``), else ``package.module[:Attribute]``."""
    from .models import ModelMap

    if value.endswith(".toml") or os.path.exists(value) or "/" in value or os.sep in value:
        return ModelMap.from_toml(value)
    if not _MODULE_SPEC.fullmatch(value):
        raise ConfigError(
            f"--models {value!r} is neither a TOML file (models.toml) nor the module of "
            "SQLAlchemy classes (package.module, or package.module:Base)"
        )
    return ModelMap.from_classes(import_classes(value), origin=value)


def import_classes(spec: str) -> Any:
    """Import ``package.module`` (the module) or ``package.module:Attribute``
    (that attribute); every failure is one line, as ``--handler``'s are."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as for --handler: the current folder is importable
    target: Any = import_module(module_name, kind="models module")
    for part in attribute.split(".") if attribute else ():
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return target


def is_declared(target: object) -> bool:
    """Whether ``target`` is something :func:`declared_specs` takes (a module,
    a registry, a declarative base or a mapped class), not a map."""
    return (
        isinstance(target, ModuleType | orm.registry)
        or _registry_of(target) is not None
        or _mapper_of(target) is not None
    )


def declared_specs(target: object, *, origin: str) -> dict[str, ModelSpec]:
    """The model of each class ``target`` maps, by model name."""
    mappers = _mappers(target, origin)
    specs: dict[str, ModelSpec] = {}
    classes: dict[str, str] = {}
    for mapper in mappers:
        klass = mapper.class_
        where = f"class {klass.__module__}.{klass.__qualname__}"
        if mapper.inherits is not None or not isinstance(mapper.local_table, sa.Table):
            log.warning(
                "not serving %s: it is mapped with inheritance or to something other than one "
                "table; the connector serves one table per model",
                where,
            )
            continue
        if mapper.local_table.name in INFRASTRUCTURE_TABLES:
            continue
        name = _setting(klass, MODEL_ATTRIBUTE, where) or class_model_name(klass.__name__)
        if name in specs:
            raise ConfigError(
                f"{classes[name]} and {where} are both model {name!r}; set "
                f"{MODEL_ATTRIBUTE} on one of them"
            )
        specs[name] = _spec_of(mapper, where)
        classes[name] = where
    if not specs:
        raise ConfigError(f"{origin} maps no class the connector can serve (one table each)")
    return specs


def apply_declared_defaults(declared: sa.Table, reflected: sa.Table) -> None:
    """Give each reflected column its declared column's Python-side
    ``default`` and ``onupdate``, so that the adapter's ``insert()`` and
    ``update()`` of ``reflected`` apply them exactly as SQLAlchemy Core does
    for ``declared``: scalars, callables (a context-sensitive one gets the
    statement's parameters, keyed by column name), SQL expressions.
    Sequences are the database's: the column's own default draws from one."""
    for declared_column in declared.columns:
        column = reflected.columns.get(declared_column.name)
        if column is None:
            continue  # a mapped column that does not exist is refused where fields are matched
        for generator in (declared_column.default, declared_column.onupdate):
            if generator is None or generator.is_sequence:
                continue
            # A copy: the declared Table keeps its own, and the copy attaches
            # to the reflected column as Column(default=...) would attach it.
            generator._copy()._set_parent(column)


def _mappers(target: object, origin: str) -> list[orm.Mapper[Any]]:
    if isinstance(target, ModuleType):
        found = [
            mapper
            for value in vars(target).values()
            if isinstance(value, type)
            and value.__module__ == target.__name__
            and (mapper := _mapper_of(value)) is not None
        ]
    elif (mapper := _mapper_of(target)) is not None:
        found = [mapper]
    else:
        registry = target if isinstance(target, orm.registry) else _registry_of(target)
        if registry is None:
            raise ConfigError(
                f"{origin} is a {type(target).__name__}, not a declarative base, a registry, "
                "a mapped class or a module of them"
            )
        found = list(registry.mappers)
    try:
        orm.configure_mappers()  # relationships resolved: a broken one is the classes' mistake
    except sa_exc.SQLAlchemyError as error:
        raise ConfigError(f"{origin}: SQLAlchemy cannot configure the classes: {error}") from None
    return sorted(found, key=lambda mapper: (mapper.class_.__module__, mapper.class_.__qualname__))


def _mapper_of(target: object) -> orm.Mapper[Any] | None:
    if not isinstance(target, type):
        return None
    found: object = sa.inspect(target, raiseerr=False)
    return found if isinstance(found, orm.Mapper) else None


def _registry_of(target: object) -> orm.registry | None:
    # A DeclarativeBase or declarative_base() keeps it as `registry`; SQLModel as `_sa_registry`.
    for attribute in ("registry", "_sa_registry"):
        registry = getattr(target, attribute, None)
        if isinstance(registry, orm.registry):
            return registry
    return None


def _setting(klass: type, attribute: str, where: str) -> str | None:
    value = klass.__dict__.get(attribute)  # the class's own: a subclass names itself
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: {attribute} must be a non-empty string")
    return value


def _names(klass: type, attribute: str, where: str) -> frozenset[str]:
    value = getattr(klass, attribute, ())
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"{where}: {attribute} must be a tuple of attribute names")
    names = tuple(value)
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{where}: {attribute} must be a tuple of attribute names")
    return frozenset(names)


def _spec_of(mapper: orm.Mapper[Any], where: str) -> ModelSpec:
    klass = mapper.class_
    table = mapper.local_table
    assert isinstance(table, sa.Table)
    columns: dict[str, sa.Column[Any]] = {}  # attribute → column of the class's table
    expressions: set[str] = set()
    for prop in mapper.column_attrs:
        (first, *others) = prop.columns
        if not others and isinstance(first, sa.Column) and first.table is table:
            columns[prop.key] = first
        else:
            expressions.add(prop.key)
    known = set(mapper.all_orm_descriptors.keys()) | set(mapper.attrs.keys())
    excluded = _names(klass, EXCLUDE_ATTRIBUTE, where)
    for attribute in sorted(excluded - known):
        raise ConfigError(f"{where}: {EXCLUDE_ATTRIBUTE} names {attribute!r}, no mapped attribute")
    for attribute in sorted(_names(klass, INCLUDE_ATTRIBUTE, where) - set(columns)):
        raise ConfigError(
            f"{where}: {INCLUDE_ATTRIBUTE}: {_not_served(mapper, attribute, expressions)}"
        )
    id_attribute = _setting(klass, ID_ATTRIBUTE, where)
    if id_attribute is not None:
        if id_attribute not in columns:
            raise ConfigError(
                f"{where}: {ID_ATTRIBUTE} names {id_attribute!r}, no mapped column attribute"
            )
        id_column: sa.ColumnElement[Any] = columns[id_attribute]
    else:
        keys = mapper.primary_key
        if len(keys) != 1:
            shown = ", ".join(column.name for column in keys)
            unique = next((a for a, c in columns.items() if c.unique and not c.primary_key), None)
            raise ConfigError(
                f"{where}: its primary key has {len(keys)} columns ({shown}), and the engine "
                f"addresses a row by one id: name a unique column as the id with "
                f'{ID_ATTRIBUTE} = "{unique or "ATTRIBUTE"}" in the class (or '
                f'[models.NAME.fields] id = "COLUMN" in a TOML map)'
            )
        id_column = keys[0]
    fields: dict[str, str] = {"id": id_column.name}
    attributes: dict[str, str] = {
        "id": next((a for a, c in columns.items() if c is id_column), "id")
    }
    if id_column.name in {columns[a].name for a in excluded if a in columns}:
        raise ConfigError(
            f"{where}: {EXCLUDE_ATTRIBUTE} names the id column; the id is always served"
        )
    for attribute, column in columns.items():
        if column is id_column or attribute in excluded:
            continue
        field = snake_to_camel(attribute)
        if field in fields:
            raise ConfigError(
                f"{where}: attributes {attributes[field]!r} and {attribute!r} are both served as "
                f"field {field!r}; leave one out with {EXCLUDE_ATTRIBUTE}"
                + (f" or name another id with {ID_ATTRIBUTE}" if field == "id" else "")
            )
        fields[field] = column.name
        attributes[field] = attribute
    return ModelSpec(
        table.name,
        table.schema,
        fields,
        typename=_setting(klass, TYPENAME_ATTRIBUTE, where) or klass.__name__,
        declared=table,
    )


def _not_served(mapper: orm.Mapper[Any], attribute: str, expressions: set[str]) -> str:
    """Why an attribute named in ``__ablo_include__`` cannot be served."""
    if attribute in mapper.relationships:
        kind = "a relationship"
    elif attribute in expressions:
        kind = "a column_property (a SQL expression)"
    elif attribute in mapper.all_orm_descriptors:
        kind = "a hybrid_property or another descriptor"
    else:
        return f"{attribute!r} is no mapped attribute"
    return (
        f"{attribute!r} is {kind}, which the connector cannot serve yet (only columns of the "
        "class's own table); serve its foreign key or source column instead"
    )
