"""A tiny Django project whose tasks the connector serves.

SQLite file next to this folder by default; set TODO_DATABASE_URL
(postgresql://user:password@host:5432/name, or mysql://...) for another
database. Serve it with, from the folder that holds manage.py::

    python manage.py migrate
    ablo-connector dev --django todo_site.settings
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("TODO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "todo_site.urls"

INSTALLED_APPS = [
    "todo",
    "connector.adapters.django",  # the connector's ledger and outbox, by `migrate`
]

_ENGINES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}


def _database(url: str | None) -> dict[str, Any]:
    if not url:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}
    parts = urlsplit(url)
    return {
        "ENGINE": f"django.db.backends.{_ENGINES[parts.scheme.split('+')[0]]}",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


DATABASES = {"default": _database(os.environ.get("TODO_DATABASE_URL"))}

# What the connector serves: the wire name, then app_label.ModelName. Task's
# fields are served as id, title, slug, createdAt, updatedAt, done; AuditEntry
# is not named, so it is not served.
ABLO = {"models": {"task": "todo.Task"}}
