"""Which Django models are served, under which names? The contract between
the app's settings reading (:mod:`.settings`) and the source (:mod:`.source`).

``settings.ABLO = {"models": {"task": "todo.Task", ...}}`` names each served
model (the wire name, then ``app_label.ModelName``); a model can also be
written as a mapping ``{"model": "todo.Task", "exclude": [...], "fields":
{"wireName": "django_field_name"}, "capture": False}``. Nothing is served
that the settings do not name. The settings side builds these objects once,
after ``django.setup()``; the source only reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DjangoModel", "ServedField"]


@dataclass(frozen=True, slots=True)
class ServedField:
    """One field as the engine sees it.

    ``wire`` is the camelCase of the Django field's name unless the settings
    rename it; ``attname`` is the attribute read and written on an instance
    (``project_id`` for a foreign key ``project``, whose wire name is
    ``projectId``); ``field`` is Django's field, for conversion and checks.
    """

    wire: str
    attname: str
    field: Any  # django.db.models.Field (Django is an optional extra)


@dataclass(frozen=True, slots=True)
class DjangoModel:
    """One served model: ``fields`` maps wire name → field, the primary key
    included under the wire name ``"id"`` (``id`` is also that field)."""

    name: str
    model: type[Any]  # a django.db.models.Model subclass (Django is an optional extra)
    id: ServedField
    fields: Mapping[str, ServedField]
    capture: bool = True
