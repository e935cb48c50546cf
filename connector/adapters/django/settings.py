"""``settings.ABLO``: which models are served, under which names.

::

    ABLO = {
        "database": "default",                      # the DATABASES alias served (optional)
        "models": {
            "task": "todo.Task",                    # the wire name, then app_label.ModelName
            "project": {
                "model": "todo.Project",
                "exclude": ["internal_notes"],      # Django field names
                "fields": {"title": "name"},        # wire name -> Django field name
                "capture": False,
            },
        }
    }

Every concrete field is served under the camelCase of its attribute name
(``due_at`` as ``dueAt``, a foreign key ``project`` as ``projectId``), the
primary key as ``id``; ``exclude`` leaves fields out and ``fields`` renames
them. Nothing is served that the setting does not name. ``database`` names
the ``DATABASES`` entry the connector reads and writes (``"default"`` unless
given). Each mistake is a
:class:`~connector.errors.ConfigError` naming the setting's key at fault.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from ...errors import ConfigError
from ..sql.models import snake_to_camel
from .served import DjangoModel, ServedField

__all__ = ["served_database", "served_models"]

_TOP_KEYS: Final = ("database", "models")
_MODEL_KEYS: Final = ("model", "exclude", "fields", "capture")
_EXAMPLE: Final = 'ABLO = {"models": {"task": "todo.Task"}}'


def _key(*parts: str) -> str:
    """``ABLO["models"]["task"]``: where in the setting a mistake is."""
    return "ABLO" + "".join(f"[{json.dumps(part)}]" for part in parts)


def served_database() -> str:
    """The ``DATABASES`` alias ``settings.ABLO["database"]`` names (``"default"``
    unless given), checked against ``settings.DATABASES``."""
    from django.conf import settings

    ablo = getattr(settings, "ABLO", None)
    alias = ablo.get("database", "default") if isinstance(ablo, Mapping) else "default"
    databases = getattr(settings, "DATABASES", None) or {}
    if not isinstance(alias, str) or not alias:
        raise ConfigError(
            f'{_key("database")} must be the name of a DATABASES entry, e.g. "default", not '
            f"{json.dumps(alias) if isinstance(alias, str) else type(alias).__name__}"
        )
    if alias not in databases:
        raise ConfigError(
            f"{_key('database')}: DATABASES has no entry {json.dumps(alias)} (its entries: "
            f"{', '.join(json.dumps(str(name)) for name in databases) or 'none'})"
        )
    return alias


def served_models() -> dict[str, DjangoModel]:
    """The models ``settings.ABLO`` names, by wire name (after ``django.setup()``)."""
    from django.conf import settings

    if not hasattr(settings, "ABLO"):
        raise ConfigError(
            f"the Django settings have no ABLO: name the served models, e.g. {_EXAMPLE}"
        )
    ablo = settings.ABLO
    if not isinstance(ablo, Mapping):
        raise ConfigError(f"ABLO must be a dict, not a {type(ablo).__name__} (e.g. {_EXAMPLE})")
    for key in ablo:
        if key not in _TOP_KEYS:
            raise ConfigError(
                f"ABLO: unknown key {json.dumps(key)} (expected {_listed(_TOP_KEYS)})"
            )
    if "models" not in ablo:
        raise ConfigError(f'ABLO has no "models": name the served models, e.g. {_EXAMPLE}')
    entries = ablo["models"]
    if not isinstance(entries, Mapping):
        raise ConfigError(
            f"{_key('models')} must be a dict of wire name to model, not a "
            f"{type(entries).__name__} (e.g. {_EXAMPLE})"
        )
    if not entries:
        raise ConfigError(f"{_key('models')} is empty: name at least one model, e.g. {_EXAMPLE}")
    served: dict[str, DjangoModel] = {}
    names_of: dict[Any, str] = {}  # model class -> the wire name it is served as
    for name, entry in entries.items():
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ConfigError(
                f"{_key('models')}: {json.dumps(name)} is not a model name (a non-empty string "
                "with no surrounding spaces)"
            )
        model = _served_model(name, entry)
        if model.model in names_of:
            raise ConfigError(
                f"{_key('models', name)}: {_label(model.model)} is already served as "
                f"{json.dumps(names_of[model.model])}; serve each model under one name"
            )
        names_of[model.model] = name
        served[name] = model
    return served


def _served_model(name: str, entry: Any) -> DjangoModel:
    key = _key("models", name)
    if isinstance(entry, str):
        label, exclude, renames, capture = entry, [], {}, True
    elif isinstance(entry, Mapping):
        for option in entry:
            if option not in _MODEL_KEYS:
                raise ConfigError(
                    f"{key}: unknown key {json.dumps(option)} (expected {_listed(_MODEL_KEYS)})"
                )
        if "model" not in entry:
            raise ConfigError(f'{key} has no "model" (e.g. "model": "todo.Task")')
        label = entry["model"]
        exclude = entry.get("exclude", [])
        renames = entry.get("fields", {})
        capture = entry.get("capture", True)
        if not isinstance(exclude, list | tuple) or not all(isinstance(x, str) for x in exclude):
            raise ConfigError(f"{_key('models', name, 'exclude')} must be a list of field names")
        if not isinstance(renames, Mapping) or not all(
            isinstance(wire, str) and isinstance(field, str) for wire, field in renames.items()
        ):
            raise ConfigError(
                f"{_key('models', name, 'fields')} must be a dict of wire name to Django field name"
            )
        if not isinstance(capture, bool):
            raise ConfigError(f"{_key('models', name, 'capture')} must be true or false")
        key = _key("models", name, "model")
    else:
        raise ConfigError(
            f'{key} must be "app_label.ModelName" or a dict with "model", not a '
            f"{type(entry).__name__}"
        )
    model = _model_class(key, label)
    return _fields(name, model, list(exclude), dict(renames), capture)


def _model_class(key: str, label: Any) -> Any:
    from django.apps import apps

    if not isinstance(label, str) or label.count(".") != 1 or "" in label.split("."):
        raise ConfigError(f'{key}: {json.dumps(label)} is not "app_label.ModelName"')
    app_label, model_name = label.split(".")
    try:
        app = apps.get_app_config(app_label)
    except LookupError:
        installed = sorted(config.label for config in apps.get_app_configs())
        raise ConfigError(
            f"{key}: no installed app has the label {json.dumps(app_label)} "
            f"(INSTALLED_APPS labels: {', '.join(installed)})"
        ) from None
    try:
        return app.get_model(model_name)
    except LookupError:
        known = sorted(model.__name__ for model in app.get_models())
        raise ConfigError(
            f"{key}: app {json.dumps(app_label)} has no model {json.dumps(model_name)} "
            f"(its models: {', '.join(known) or 'none'})"
        ) from None


def _label(model: Any) -> str:
    return f"{model._meta.app_label}.{model.__name__}"


def _fields(
    name: str, model: Any, exclude: list[str], renames: dict[str, str], capture: bool
) -> DjangoModel:
    meta = model._meta
    pk = meta.pk
    pk_fields = list(getattr(meta, "pk_fields", None) or ([pk] if pk is not None else []))
    if pk is None or len(pk_fields) != 1 or pk.column is None:
        columns = ", ".join(field.name for field in pk_fields) or "none"
        raise ConfigError(
            f"{_key('models', name)}: {_label(model)} has no single-field primary key "
            f"({columns}); the engine addresses each row by one id"
        )
    concrete = list(meta.concrete_fields)
    by_name: dict[str, Any] = {}
    for field in concrete:
        by_name[field.name] = field
        by_name[field.attname] = field
    known = ", ".join(field.name for field in concrete)

    def find(option: str, field_name: str) -> Any:
        field = by_name.get(field_name)
        if field is None:
            raise ConfigError(
                f"{_key('models', name, option)}: {_label(model)} has no field "
                f"{json.dumps(field_name)} (its fields: {known})"
            )
        return field

    excluded: set[Any] = set()
    for field_name in exclude:
        field = find("exclude", field_name)
        if field is pk:
            raise ConfigError(
                f"{_key('models', name, 'exclude')}: the primary key {json.dumps(pk.name)} is "
                'served as "id" and cannot be left out'
            )
        excluded.add(field)
    wire_of: dict[Any, str] = {}
    for wire, field_name in renames.items():
        option = _key("models", name, "fields")
        field = find("fields", field_name)
        if not wire.strip() or wire != wire.strip():
            raise ConfigError(f"{option}: {json.dumps(wire)} is not a field name")
        if field is pk:
            raise ConfigError(
                f'{option}: the primary key {json.dumps(pk.name)} is always served as "id"'
            )
        if wire == "id":
            raise ConfigError(f'{option}: "id" is the primary key\'s wire name; choose another')
        if field in excluded:
            raise ConfigError(
                f"{option}: field {json.dumps(field.name)} is both renamed and excluded"
            )
        if field in wire_of:
            raise ConfigError(
                f"{option}: field {json.dumps(field.name)} is renamed twice "
                f"({json.dumps(wire_of[field])} and {json.dumps(wire)})"
            )
        wire_of[field] = wire
    served: dict[str, ServedField] = {"id": ServedField("id", pk.attname, pk)}
    for field in concrete:
        if field is pk or field in excluded:
            continue
        wire = wire_of.get(field) or snake_to_camel(field.attname)
        if wire in served:
            other = served[wire]
            if field in wire_of or other.field in wire_of:
                reason = 'rename one differently in "fields"'
            else:
                reason = 'rename one in "fields" or leave one out with "exclude"'
            raise ConfigError(
                f"{_key('models', name)}: fields {json.dumps(other.field.name)} and "
                f"{json.dumps(field.name)} would both be served as {json.dumps(wire)}; {reason}"
            )
        served[wire] = ServedField(wire, field.attname, field)
    return DjangoModel(name=name, model=model, id=served["id"], fields=served, capture=capture)


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(json.dumps(name) for name in names)
