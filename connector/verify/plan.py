"""What does verify write? The model, its fields, and values for each.

A handler's models and fields are its own business: the user names them
(``--model task --field title=text --field priority=integer``), or the kit
writes ``title`` (text) and ``priority`` (integer) to the handler's first
declared model, else to ``task``. The SQL adapter knows its tables, so the
kit picks a model and its columns itself, and fills every column a row
needs (NOT NULL without a default) with a value of the column's type.

Every row has a text field (the kit tags rows through it, and the where,
order and cursor checks compare it); an integer field is optional, and
the checks that compare numbers run only with one.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from ..errors import ConfigError
from ..serve.datasource import DataSource

if TYPE_CHECKING:
    from ..adapters.django.served import DjangoModel
    from ..adapters.sql import ServedModel

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_MODEL",
    "FieldKind",
    "FieldSpec",
    "Plan",
    "looks_like_test_database",
    "parse_field",
    "plan_for_django",
    "plan_for_handler",
    "plan_for_sql",
]

FieldKind = Literal["text", "integer", "number", "boolean", "timestamp", "date", "uuid", "json"]
FIELD_KINDS: Final[tuple[str, ...]] = get_args(FieldKind)

DEFAULT_MODEL: Final = "task"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field the kit writes: its name on the wire and the kind of value it holds."""

    name: str
    kind: FieldKind
    #: The most characters a text field holds (a VARCHAR(n) column), if known.
    max_length: int | None = None
    #: Whether the field may hold null (the kit tests IS NULL only on one that may).
    nullable: bool = True
    #: The largest integer the field holds (a 16- or 32-bit column), if known.
    max_integer: int = 2**31 - 1


DEFAULT_FIELDS: Final = (FieldSpec("title", "text"), FieldSpec("priority", "integer"))

_FIELD = re.compile(r"^\s*(?P<name>[^=\s]+)\s*=\s*(?P<kind>[a-z]+)\s*$")


def parse_field(text: str) -> FieldSpec:
    """``title=text`` → ``FieldSpec("title", "text")``; ValueError says what is accepted."""
    found = _FIELD.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not NAME=KIND (e.g. title=text)")
    kind = found["kind"]
    if kind not in FIELD_KINDS:
        raise ValueError(f"{text!r}: the kind must be one of {', '.join(FIELD_KINDS)}")
    name = found["name"]
    if name == "id":
        raise ValueError("the kit writes the id itself; name the other fields")
    return FieldSpec(name, kind)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run writes: the model and its fields, and how ids and values are made."""

    model: str
    text: FieldSpec
    integer: FieldSpec | None
    #: Every other field a row must carry (required columns, fields the user named).
    others: tuple[FieldSpec, ...] = ()
    #: Every id and text value the run writes starts with this (``verify-1a2b3c4d-``).
    prefix: str = field(default_factory=lambda: f"verify-{secrets.token_hex(4)}-")
    #: Integers the run writes start above this, far from any row a person wrote.
    integer_base: int = 0
    #: Where the plan came from, for the first line of the output.
    origin: str = ""

    @property
    def fields(self) -> tuple[FieldSpec, ...]:
        return (self.text, *((self.integer,) if self.integer else ()), *self.others)

    def describe(self) -> str:
        shown = ", ".join(f"{spec.name} ({spec.kind})" for spec in self.fields)
        return f"model {self.model}, fields {shown}"

    def with_integer_base(self) -> Plan:
        """A copy whose integers start at a random base the field can hold (room for 1,000)."""
        if self.integer is None:
            return self
        top = self.integer.max_integer - 1_000
        base = secrets.randbelow(top // 2) + top // 2
        return Plan(
            self.model, self.text, self.integer, self.others, self.prefix, base, self.origin
        )


def sample_value(spec: FieldSpec, number: int) -> Any:
    """A value of ``spec``'s kind for a field the checks do not compare (a required
    column), distinct for each ``number`` where the kind allows."""
    if spec.kind == "text":
        return f"verify {number}"[: spec.max_length or None]
    if spec.kind == "integer":
        return number
    if spec.kind == "number":
        return number + 0.5
    if spec.kind == "boolean":
        return number % 2 == 0
    if spec.kind == "timestamp":
        moment = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC) + dt.timedelta(seconds=number)
        return moment.isoformat().replace("+00:00", "Z")
    if spec.kind == "date":
        return (dt.date(2001, 2, 3) + dt.timedelta(days=number)).isoformat()
    if spec.kind == "uuid":
        return str(uuid.uuid4())
    return {"verify": number}


def _split_fields(
    fields: Sequence[FieldSpec], where: str
) -> tuple[FieldSpec, FieldSpec | None, tuple[FieldSpec, ...]]:
    text = next((spec for spec in fields if spec.kind == "text"), None)
    if text is None:
        raise ConfigError(
            f"{where}: verify needs a text field to write (--field NAME=text); it tags its "
            "rows and compares text through it"
        )
    integer = next((spec for spec in fields if spec.kind == "integer"), None)
    others = tuple(spec for spec in fields if spec is not text and spec is not integer)
    return text, integer, others


def plan_for_handler(source: DataSource, model: str | None, fields: Sequence[FieldSpec]) -> Plan:
    """The plan for a handler: the model and fields given, else the defaults."""
    origin = "as given (--model, --field)"
    if model is None:
        declared = _declared_models(source)
        model = declared[0] if declared else DEFAULT_MODEL
        origin = (
            f"the first model {type(source).__name__} declares"
            if declared
            else "the default model; say --model and --field to choose"
        )
    elif not fields:
        origin = "--model as given, default fields; say --field to choose"
    text, integer, others = _split_fields(fields or DEFAULT_FIELDS, "--field")
    return Plan(model, text, integer, others, origin=origin).with_integer_base()


def _declared_models(source: DataSource) -> list[str]:
    declared = source.model_names
    return [] if declared is None else list(declared)


# ---------------------------------------------------------------- the SQL adapter


def _kind_of(column: Any) -> FieldKind | None:
    import sqlalchemy as sa

    kinds: tuple[tuple[type[Any], FieldKind], ...] = (
        (sa.Boolean, "boolean"),
        (sa.Integer, "integer"),
        (sa.Float, "number"),
        (sa.Numeric, "number"),
        (sa.DateTime, "timestamp"),
        (sa.Date, "date"),
        (sa.Uuid, "uuid"),
        (sa.JSON, "json"),
        (sa.String, "text"),
    )
    for klass, kind in kinds:
        if isinstance(column.type, klass):
            return kind
    return None


def _max_integer(column: Any) -> int:
    import sqlalchemy as sa

    if isinstance(column.type, sa.SmallInteger):
        return 2**15 - 1
    if isinstance(column.type, sa.BigInteger):
        return 2**53 - 1  # JavaScript's safe integers: the engine reads numbers as doubles
    return 2**31 - 1


def _unique(column: Any) -> bool:
    """Whether the column alone is unique: the kit writes one text value to several rows."""
    table = column.table
    if column.unique or (column.primary_key and len(table.primary_key.columns) == 1):
        return True
    for index in table.indexes:
        if index.unique and [c.name for c in index.columns] == [column.name]:
            return True
    for constraint in table.constraints:
        columns = getattr(constraint, "columns", None)
        if (
            type(constraint).__name__ == "UniqueConstraint"
            and columns is not None
            and [c.name for c in columns] == [column.name]
        ):
            return True
    return False


# Room for the prefix and a tag: "verify-1a2b3c4d-" and "list-12".
_MIN_TEXT_LENGTH: Final = 48


@dataclass(frozen=True, slots=True)
class _Described:
    """What the kit needs to know of one field of an adapter's model, whatever the adapter."""

    name: str  # the wire name
    kind: FieldKind | None  # None: a type the kit cannot write
    shown: str  # how the user knows it: "column 'due_at'", "field 'due_at'"
    type_text: str
    unique: bool
    required: bool  # a row needs a value the database will not supply
    nullable: bool
    references: bool  # a foreign key
    max_length: int | None = None
    max_integer: int = 2**31 - 1

    def spec(self, kind: FieldKind) -> FieldSpec:
        return FieldSpec(
            self.name,
            kind,
            max_length=self.max_length,
            nullable=self.nullable,
            max_integer=self.max_integer if kind == "integer" else 2**31 - 1,
        )

    @property
    def too_short(self) -> bool:
        return self.max_length is not None and self.max_length < _MIN_TEXT_LENGTH


def _described_column(name: str, column: Any) -> _Described:
    from ..adapters.sql.values import TEXT_CAPACITY

    kind = _kind_of(column)
    # The adapter's reflection knows what a type holds where the type states
    # no length (MySQL's TEXT); else the column's own length (VARCHAR(n)).
    length = column.info.get(TEXT_CAPACITY, getattr(column.type, "length", None))
    return _Described(
        name,
        kind,
        f"column {column.name!r}",
        str(column.type),
        unique=_unique(column),
        required=(
            not column.nullable
            and column.server_default is None
            and column.default is None
            and not column.primary_key
        ),
        nullable=bool(column.nullable),
        references=bool(column.foreign_keys),
        max_length=length if isinstance(length, int) else None,
        max_integer=_max_integer(column) if kind == "integer" else 2**31 - 1,
    )


def _django_kind(field: Any) -> FieldKind | None:
    from django.db import models

    if field.choices:
        return None  # only the listed values validate
    kinds: tuple[tuple[type[Any], FieldKind], ...] = (
        (models.BooleanField, "boolean"),
        (models.AutoField, "integer"),
        (models.BigAutoField, "integer"),
        (models.SmallAutoField, "integer"),
        (models.IntegerField, "integer"),
        (models.FloatField, "number"),
        (models.DecimalField, "number"),
        (models.DateTimeField, "timestamp"),
        (models.DateField, "date"),
        (models.UUIDField, "uuid"),
        (models.JSONField, "json"),
    )
    for klass, kind in kinds:
        if isinstance(field, klass):
            return kind
    # Text the kit writes ("verify-1a2b3c4d-list-12") is a valid slug, not an
    # e-mail address, a URL or an IP address.
    refused = (models.EmailField, models.URLField, models.GenericIPAddressField)
    if isinstance(field, models.CharField | models.TextField) and not isinstance(field, refused):
        return "text"
    return None


def _described_django_field(name: str, served_field: Any) -> _Described:
    from django.db import models

    field = served_field.field
    kind = _django_kind(field)
    if isinstance(field, models.SmallIntegerField):
        max_integer = 2**15 - 1
    elif isinstance(field, models.BigIntegerField):
        max_integer = 2**53 - 1  # JavaScript's safe integers
    else:
        max_integer = 2**31 - 1
    return _Described(
        name,
        kind,
        f"field {field.name!r}",
        type(field).__name__,
        unique=bool(field.unique),
        # full_clean() refuses a blank field without a default; a field the
        # model fills itself (auto_now, not editable) needs nothing.
        required=field.editable and not field.blank and not field.has_default(),
        nullable=bool(field.null),
        references=bool(field.is_relation),
        max_length=field.max_length if kind == "text" else None,
        max_integer=max_integer,
    )


def _model_plan(
    name: str,
    id_field: _Described,
    fields: Mapping[str, _Described],
    given: Mapping[str, FieldSpec],
) -> tuple[Plan | None, str]:
    """The plan for one model, or why the kit cannot write it.

    The text field the kit tags rows through and the integer field it
    compares are the first of their kind among the fields ``given``
    (``--field``), else the first fields of that kind that fit. Every other
    field a row needs (and every field given) gets a value of its type.
    """
    if id_field.kind != "text":
        return None, f"its id {id_field.shown} is not text (the kit writes text ids)"
    if id_field.too_short:
        return None, f"its id {id_field.shown} holds fewer than {_MIN_TEXT_LENGTH} characters"
    missing = [field_name for field_name in given if field_name not in fields]
    if missing:
        return None, f"it has no field {missing[0]!r}"
    kinds = {n: given[n].kind if n in given else f.kind for n, f in fields.items()}

    def candidates(kind: FieldKind) -> list[str]:
        """The fields given of this kind, else every field of it."""
        named = [n for n in given if kinds[n] == kind]
        return named or [n for n in fields if kinds[n] == kind]

    text_name = next(
        (n for n in candidates("text") if not fields[n].unique and not fields[n].too_short),
        None,
    )
    if text_name is None:
        return None, (
            "it has no text field the kit can write (one that is not unique and holds "
            f"{_MIN_TEXT_LENGTH} characters or more)"
        )
    integers = [n for n in candidates("integer") if not fields[n].unique]
    # A nullable integer lets the kit check IS NULL too.
    integer_name = next((n for n in integers if fields[n].nullable), None) or next(
        iter(integers), None
    )
    others: list[FieldSpec] = []
    for field_name, described in fields.items():
        if field_name in (text_name, integer_name):
            continue
        if field_name not in given and not described.required:
            continue
        kind = kinds[field_name]
        if kind is None:
            return None, (
                f"{described.shown} needs a value and the kit does not know its type "
                f"({described.type_text}); say --field {field_name}=KIND"
            )
        if described.references and field_name not in given:
            return None, f"{described.shown} needs a value that references another table"
        others.append(described.spec(kind))
    plan = Plan(
        name,
        fields[text_name].spec("text"),
        None if integer_name is None else fields[integer_name].spec("integer"),
        tuple(others),
    )
    return plan, ""


def _sql_model_plan(
    name: str, served: ServedModel, given: Mapping[str, FieldSpec]
) -> tuple[Plan | None, str]:
    fields = {n: _described_column(n, c) for n, c in served.columns.items() if n != "id"}
    plan, why = _model_plan(name, _described_column("id", served.columns["id"]), fields, given)
    return (None if plan is None else replace(plan, origin="reflected from the database")), why


def _django_model_plan(
    name: str, served: DjangoModel, given: Mapping[str, FieldSpec]
) -> tuple[Plan | None, str]:
    fields = {
        n: _described_django_field(n, f)
        for n, f in served.fields.items()
        if n != "id" and f.field.editable
    }
    plan, why = _model_plan(name, _described_django_field("id", served.id), fields, given)
    return (None if plan is None else replace(plan, origin="read from the Django models")), why


def plan_for_sql(
    models: Mapping[str, ServedModel], model: str | None, fields: Sequence[FieldSpec]
) -> Plan:
    """The plan for the SQL adapter: the model given, else the first one the kit can
    write (one with an integer column first); ``fields`` choose among its columns."""
    if not models:
        raise ConfigError("the database serves no model (no table with an id column)")
    return _adapter_plan(
        {name: partial(_sql_model_plan, served.name, served) for name, served in models.items()},
        {served.name for served in models.values()},
        model,
        fields,
        "the database serves",
    )


def plan_for_django(
    models: Mapping[str, DjangoModel], model: str | None, fields: Sequence[FieldSpec]
) -> Plan:
    """The plan for the Django adapter, chosen as :func:`plan_for_sql` chooses."""
    return _adapter_plan(
        {name: partial(_django_model_plan, name, served) for name, served in models.items()},
        set(models),
        model,
        fields,
        "settings.ABLO serves",
    )


def _adapter_plan(
    planners: Mapping[str, Callable[[Mapping[str, FieldSpec]], tuple[Plan | None, str]]],
    names: set[str],
    model: str | None,
    fields: Sequence[FieldSpec],
    serves: str,
) -> Plan:
    chosen = {spec.name: spec for spec in fields}
    if model is not None:
        planner = planners.get(model)
        if planner is None:
            raise ConfigError(
                f"--model {model}: {serves} no such model ({', '.join(sorted(names))})"
            )
        plan, why = planner(chosen)
        if plan is None:
            raise ConfigError(f"--model {model}: the kit cannot write it: {why}")
        return plan.with_integer_base()
    reasons: list[str] = []
    plans: list[Plan] = []
    for name in sorted(names):
        plan, why = planners[name](chosen)
        if plan is None:
            reasons.append(f"{name}: {why}")
        else:
            plans.append(plan)
    if not plans:
        raise ConfigError(
            "no served model can be written by the kit (" + "; ".join(reasons) + "); "
            "choose one with --model and --field"
        )
    best = next((plan for plan in plans if plan.integer is not None), plans[0])
    return best.with_integer_base()


# ---------------------------------------------------------------- which databases


_TEST_WORDS: Final = ("test", "tests", "testing", "dev", "ci", "tmp", "temp", "scratch", "sandbox")
_TEST_NAME: Final = re.compile(r"test|verify", re.IGNORECASE)


def looks_like_test_database(name: str) -> bool:
    """Whether a database's name (PostgreSQL) or file name (SQLite) says it is for tests:
    it contains ``test`` or ``verify``, or one of its words is dev, ci, tmp, temp,
    scratch or sandbox."""
    words = [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word]
    return bool(_TEST_NAME.search(name)) or any(word in _TEST_WORDS for word in words)
