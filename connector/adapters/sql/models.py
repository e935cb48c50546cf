"""Which tables are served, under which model and field names?

A *model map* says which table serves a model and which column serves a
field when the default naming (camelCase field, snake_case column) does not
fit. Everything else is reflected from the database at startup, so the map
may be one line per model, or absent: then every table is served under its
own name.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from ...errors import ConfigError
from ...serve.models import ModelNames
from .values import (
    DATES_AS_WRITTEN,
    INTEGER_BITS,
    INTEGER_UNSIGNED,
    SINGLE_PRECISION,
    TEXT_CAPACITY,
    to_json_value,
)

if TYPE_CHECKING:
    from .dialects import Dialect

__all__ = ["ModelMap", "ModelSpec", "ServedModel", "camel_to_snake", "snake_to_camel"]

LEDGER_TABLE: Final = "ablo_idempotency"
OUTBOX_TABLE: Final = "ablo_outbox"
# The adapter's own tables (the last three only where capture is installed:
# the context on SQLite, the staging table on MySQL and MariaDB).
INFRASTRUCTURE_TABLES: Final = frozenset(
    {LEDGER_TABLE, OUTBOX_TABLE, "ablo_capture", "ablo_capture_context", "ablo_capture_pending"}
)

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def camel_to_snake(name: str) -> str:
    """``dueAt`` → ``due_at``: the column a field is looked for by default."""
    return _CAMEL_BOUNDARY.sub("_", name).lower()


def snake_to_camel(name: str) -> str:
    """``due_at`` → ``dueAt``: the field a reflected column is served as."""
    head, *rest = name.split("_")
    if not head:  # keep leading underscores: `_private` stays `_private`
        return name
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the operator wrote about one model; the rest is reflected."""

    table: str
    schema: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()
    #: The model's typename on the engine's clients, another name it answers to.
    typename: str | None = None
    #: Whether ``migrate --capture`` records the application's own writes to it.
    capture: bool = True
    #: The application keeps the id unique although no key of the table says
    #: so alone (a PostgreSQL partitioned table, whose keys must hold the
    #: partition key): serve it all the same.
    id_unique: bool = False
    #: The application's own Table (from its SQLAlchemy class, see .declared):
    #: its Python-side defaults apply to writes, and only ``fields`` are served.
    declared: sa.Table | None = field(default=None, compare=False)


_SPEC_KEYS: Final = frozenset(
    {"table", "schema", "fields", "exclude", "typename", "capture", "id_unique"}
)


class ModelMap(Mapping[str, ModelSpec]):
    """Model name on the wire → :class:`ModelSpec`.

    Build it from TOML (:meth:`from_toml`) or a dict (:meth:`from_dict`)::

        [models.task]            # the model name on the wire
        table = "tasks"          # default: the model name
        exclude = ["secret"]     # optional: columns never served
        typename = "Task"        # optional: another name it answers to
        [models.task.fields]     # optional: field = "column" overrides
        dueAt = "due_at"

    A model answers to its name, its typename and both in lowercase (see
    ``connector.serve.models``); a map in which two models share one of
    these names is refused.

    A top-level ``classes = "package.module:Base"`` takes the models from
    the application's SQLAlchemy classes (:meth:`from_classes`); a
    ``[models.NAME]`` of the same name then overrides what it sets of that
    class's model, and any other adds a model of its own.
    """

    def __init__(self, specs: Mapping[str, ModelSpec], *, origin: str = "the model map") -> None:
        self._specs = dict(specs)
        self._origin = origin
        self._names: ModelNames | None = None

    @property
    def names(self) -> ModelNames:
        """The names requests may use for these models; ConfigError if two share one."""
        if self._names is None:
            self._names = ModelNames(
                {name: spec.typename for name, spec in self._specs.items()}, origin=self._origin
            )
        return self._names

    @classmethod
    def from_classes(cls, target: object, *, origin: str | None = None) -> ModelMap:
        """The models of the application's SQLAlchemy classes: a declarative
        base, a registry, a mapped class or a module (see .declared)."""
        from .declared import declared_specs

        where = origin or str(getattr(target, "__name__", type(target).__name__))
        model_map = cls(declared_specs(target, origin=where), origin=where)
        model_map.names  # noqa: B018 - refuses, now, classes whose models share a name
        return model_map

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "the model map") -> ModelMap:
        declared: Mapping[str, ModelSpec] = {}
        if isinstance(data, Mapping) and "classes" in data:
            from .declared import import_classes

            classes = data["classes"]
            if not isinstance(classes, str) or not classes:
                raise ConfigError(f"{origin}: classes must name a module, e.g. 'myapp.models:Base'")
            declared = cls.from_classes(import_classes(classes), origin=classes)._specs
            data = {key: value for key, value in data.items() if key != "classes"}
            data.setdefault("models", {})
        models = data.get("models", data) if isinstance(data, Mapping) else None
        if not isinstance(models, Mapping) or not (models or declared):
            raise ConfigError(f"{origin} has no models (expected [models.<name>] tables)")
        extra = set(data) - {"models"} if "models" in data else set()
        if extra:
            raise ConfigError(f"{origin}: unknown top-level keys {sorted(extra)}")
        specs: dict[str, ModelSpec] = dict(declared)
        for name, raw in models.items():
            where = f"{origin}: model {name!r}"
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{origin}: model names must be non-empty strings")
            if raw is None:
                raw = {}
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{where} must be a table of settings")
            unknown = set(raw) - _SPEC_KEYS
            if unknown:
                raise ConfigError(
                    f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_SPEC_KEYS)})"
                )
            table = raw.get("table", name)
            schema = raw.get("schema")
            fields = raw.get("fields", {})
            exclude = raw.get("exclude", [])
            typename = raw.get("typename")
            capture = raw.get("capture", True)
            if not isinstance(capture, bool):
                raise ConfigError(f"{where}: capture must be true or false")
            if not isinstance(raw.get("id_unique", False), bool):
                raise ConfigError(f"{where}: id_unique must be true or false")
            if typename is not None and (not isinstance(typename, str) or not typename):
                raise ConfigError(f"{where}: typename must be a non-empty string")
            if not isinstance(table, str) or not table:
                raise ConfigError(f"{where}: table must be a non-empty string")
            if schema is not None and (not isinstance(schema, str) or not schema):
                raise ConfigError(f"{where}: schema must be a non-empty string")
            if not isinstance(fields, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v for k, v in fields.items()
            ):
                raise ConfigError(f"{where}: fields must map field names to column names")
            if not isinstance(exclude, list) or not all(isinstance(c, str) for c in exclude):
                raise ConfigError(f"{where}: exclude must be a list of column names")
            base = declared.get(name)
            if base is None:
                specs[name] = ModelSpec(
                    table,
                    schema,
                    dict(fields),
                    frozenset(exclude),
                    typename,
                    capture,
                    id_unique=raw.get("id_unique", False),
                )
            else:
                specs[name] = _overridden(base, raw)
        model_map = cls(specs, origin=origin)
        model_map.names  # noqa: B018 - refuses, now, a map whose models share a name
        return model_map

    @classmethod
    def from_toml(cls, path: str | Path) -> ModelMap:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as error:
            raise ConfigError(f"cannot read the model map {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"the model map {path} is not valid TOML: {error}") from None
        return cls.from_dict(data, origin=str(path))

    @classmethod
    def of_tables(cls, tables: Iterable[str]) -> ModelMap:
        """Every table served under its own name (the default without a map)."""
        return cls({t: ModelSpec(t) for t in tables if t not in INFRASTRUCTURE_TABLES})

    def __getitem__(self, name: str) -> ModelSpec:
        return self._specs[name]

    def __iter__(self) -> Any:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"ModelMap({sorted(self._specs)})"


def _overridden(base: ModelSpec, raw: Mapping[str, Any]) -> ModelSpec:
    """A class's model with what its ``[models.NAME]`` sets (checked by the
    caller): a field it maps takes its column from the class's field, and
    an excluded column leaves the served fields."""
    renamed: Mapping[str, str] = raw.get("fields", {})
    exclude = frozenset(raw.get("exclude", ()))
    taken = set(renamed.values()) | exclude
    fields = {name: column for name, column in base.fields.items() if column not in taken}
    fields.update(renamed)
    return dataclasses.replace(
        base,
        table=raw.get("table", base.table),
        schema=raw.get("schema", base.schema),
        fields=fields,
        exclude=exclude,
        typename=raw.get("typename", base.typename),
        capture=raw.get("capture", base.capture),
        id_unique=raw.get("id_unique", base.id_unique),
    )


class IdNotUnique(ConfigError):
    """The column served as ``id`` is not unique by itself."""


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One model as reflected: its table and the field ↔ column mapping.

    What every request needs is built once here (the selected columns, the
    load-by-id statement), so serving a request costs dict hits and a
    statement SQLAlchemy has already compiled, not a new query each time.
    """

    name: str
    table: sa.Table
    columns: Mapping[str, sa.Column[Any]]  # field → column
    fields: Mapping[str, str]  # column name → field
    selected: tuple[sa.Column[Any], ...] = ()
    load_statement: sa.Select[Any] = field(init=False)

    def __post_init__(self) -> None:
        if not self.selected:
            object.__setattr__(self, "selected", tuple(self.columns.values()))
        statement = sa.select(*self.selected).where(self.id == sa.bindparam("ablo_id")).limit(1)
        object.__setattr__(self, "load_statement", statement)

    @property
    def id(self) -> sa.Column[Any]:
        return self.columns["id"]

    @property
    def archived_at(self) -> sa.Column[Any] | None:
        return self.columns.get("archivedAt")

    def values_to_fields(self, row: Sequence[Any]) -> dict[str, Any]:
        """A row of the selected columns (in order) under field names."""
        fields = dict(zip(self.columns, row, strict=True))
        if fields["id"] is not None and not isinstance(fields["id"], str):
            fields["id"] = str(fields["id"])
        return fields

    def rows_to_json(self, rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
        """Rows of the selected columns as JSON-ready objects under field
        names: what :meth:`values_to_fields` and ``to_json_value`` make of
        each, in one conversion for the whole page. Converting the rows'
        values before they become objects costs half as much (in a 50-row
        page, 60 against 130 µs): pydantic-core copies a tuple of plain
        values far faster than an object holding them."""
        fields = tuple(self.columns)
        id_index = fields.index("id")
        values: list[Sequence[Any]] = []
        for row in rows:
            key = row[id_index]
            if key is not None and not isinstance(key, str):
                # ids are strings on the wire, made so before any conversion
                row = list(row)
                row[id_index] = str(key)
            elif not isinstance(row, tuple | list):
                row = tuple(row)  # a driver's row object, which pydantic-core would write as text
            values.append(row)
        converted: list[list[Any]] = to_json_value(values)
        return [dict(zip(fields, row, strict=True)) for row in converted]

    def row_to_fields(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        fields = {self.fields[key]: value for key, value in row.items() if key in self.fields}
        if fields.get("id") is not None and not isinstance(fields["id"], str):
            fields["id"] = str(fields["id"])  # ids are strings on the wire, whatever the column
        return fields

    @classmethod
    def reflect(cls, name: str, spec: ModelSpec, table: sa.Table, dialect: Dialect) -> ServedModel:
        where = f"model {name!r} (table {table.fullname!r})"
        by_name = {column.name: column for column in table.columns}
        for excluded in spec.exclude:
            if excluded not in by_name:
                raise ConfigError(f"{where}: excluded column {excluded!r} does not exist")
        overridden: dict[str, str] = {}
        for field_name, column_name in spec.fields.items():
            if column_name not in by_name:
                raise ConfigError(
                    f"{where}: field {field_name!r} names column {column_name!r}, which does not exist"
                )
            if column_name in spec.exclude:
                raise ConfigError(f"{where}: column {column_name!r} is both mapped and excluded")
            if column_name in overridden:
                # One column cannot be written under two names in one operation.
                raise ConfigError(
                    f"{where}: fields {overridden[column_name]!r} and {field_name!r} both map "
                    f"column {column_name!r}; a column serves one field"
                )
            overridden[column_name] = field_name
        columns: dict[str, sa.Column[Any]] = {}
        fields: dict[str, str] = {}
        for column_name, column in by_name.items():
            if column_name in spec.exclude:
                continue
            if spec.declared is not None and column_name not in overridden:
                continue  # a column the application's class does not map
            field_name = overridden.get(column_name, snake_to_camel(column_name))
            if field_name in columns:
                raise ConfigError(
                    f"{where}: columns {columns[field_name].name!r} and {column_name!r} both serve "
                    f"field {field_name!r}; name one in [models.{name}.fields]"
                )
            if isinstance(column.type, sa.Integer):
                column.info[INTEGER_BITS] = dialect.integer_bits(column.type)
                column.info[INTEGER_UNSIGNED] = dialect.integer_unsigned(column.type)
            elif isinstance(column.type, sa.DateTime | sa.Date | sa.Time):
                column.info[DATES_AS_WRITTEN] = dialect.dates_as_written
            elif isinstance(column.type, sa.Float):
                column.info[SINGLE_PRECISION] = dialect.single_precision(column.type)
            elif isinstance(column.type, sa.String):
                capacity = dialect.text_capacity(column.type)
                if capacity is not None:
                    column.info[TEXT_CAPACITY] = capacity
            columns[field_name] = column
            fields[column_name] = field_name
        if "id" not in columns:
            raise ConfigError(
                f"{where} has no column for field 'id' (map one: [models.{name}.fields] id = \"...\")"
            )
        if not spec.id_unique and not _unique_alone(table, columns["id"]):
            # Updates and deletes address a row by its id alone: on a column
            # that is only part of a key, one of them would write every row
            # sharing the id (each tenant's, with a key of id and tenant).
            raise IdNotUnique(
                f"{where}: column {columns['id'].name!r}, served as field 'id', is not unique on "
                "its own (the primary key has other columns, and no unique index holds it alone), "
                "so a write by id could change several rows; add a unique index on it, map a "
                f'unique column ([models.{name}.fields] id = "..."), or, if the application keeps '
                f"it unique, say so: [models.{name}] id_unique = true"
            )
        return cls(name, table, columns, fields)


def _unique_alone(table: sa.Table, column: sa.Column[Any]) -> bool:
    """Whether ``column``'s values are unique by themselves, as far as the
    table's keys tell: a table without a primary key (a view, say) states
    nothing, and is taken at its word."""
    if list(table.primary_key.columns) in ([column], []):
        return True
    keys: list[sa.UniqueConstraint | sa.Index] = [
        c for c in table.constraints if isinstance(c, sa.UniqueConstraint)
    ]
    # A partial index (WHERE deleted_at IS NULL) leaves the other rows free to repeat.
    keys += [index for index in table.indexes if index.unique and not _partial(index)]
    return any(list(key.columns) == [column] for key in keys)


def _partial(index: sa.Index) -> bool:
    return any(
        key.endswith("_where") and value is not None for key, value in index.dialect_kwargs.items()
    )
