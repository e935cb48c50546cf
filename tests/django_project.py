"""Django configured for the adapter's tests: once per process (Django
cannot be configured twice), on SQLite or a PostgreSQL URL."""

from __future__ import annotations

from typing import Any

from connector.adapters.django.served import DjangoModel, ServedField
from connector.adapters.sql.models import snake_to_camel
from connector.adapters.sql.schema import migration_statements


def configure(database: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": database},
        INSTALLED_APPS=["tests.django_todo"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


def create_tables() -> None:
    """The app's tables (the schema editor), and the ledger and outbox by the
    SQL adapter's own statements."""
    from django.db import connection

    from tests.django_todo.models import Note, Project, Task

    with connection.schema_editor() as editor:
        editor.create_model(Project)
        editor.create_model(Task)
        editor.create_model(Note)
    dialect = {"postgresql": "postgresql", "sqlite": "sqlite", "mysql": "mysql"}[connection.vendor]
    with connection.cursor() as cursor:
        for statement in migration_statements(dialect):
            cursor.execute(statement)


def served(name: str, model: Any, *, capture: bool = True) -> DjangoModel:
    """Every concrete field under its camelCase name, the key as ``id``."""
    fields: dict[str, ServedField] = {}
    key: ServedField | None = None
    for field in model._meta.concrete_fields:
        wire = "id" if field.primary_key else snake_to_camel(field.attname)
        one = ServedField(wire, field.attname, field)
        fields[wire] = one
        if field.primary_key:
            key = one
    assert key is not None
    return DjangoModel(name, model, key, fields, capture)


def served_models() -> dict[str, DjangoModel]:
    from tests.django_todo.models import Project, Task

    return {"task": served("task", Task), "project": served("project", Project)}
