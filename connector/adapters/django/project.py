"""Load a Django project the way ``manage.py`` does, and read what it serves.

:func:`load_project` is what ``ablo-connector run --django mysite.settings``
calls: it finds the settings module (the argument, or
``DJANGO_SETTINGS_MODULE``), makes the current directory importable,
sets Django up, checks that the connector's app is installed and migrated,
and returns the served models of ``settings.ABLO``. Every way this can go
wrong is one :class:`~connector.errors.ConfigError` line saying what to do.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Final

from ...errors import ConfigError, ConnectorError
from ...serve.loader import import_module
from .served import DjangoModel
from .settings import served_database, served_models

__all__ = [
    "APP",
    "APP_LABEL",
    "DatabaseUnreachable",
    "check_migrated",
    "database_secrets",
    "load_project",
    "setup_project",
]

APP: Final = "connector.adapters.django"
APP_LABEL: Final = "ablo_connector"


class DatabaseUnreachable(ConnectorError):
    """The project's database did not answer: an outage, not a mistake in the settings."""


def load_project(settings_module: str | None) -> dict[str, DjangoModel]:
    """Set up the project, check its database (``ABLO["database"]``) has the
    connector's tables, and return the models ``settings.ABLO`` serves, by wire name."""
    models = setup_project(settings_module)
    check_migrated(served_database())
    return models


def setup_project(settings_module: str | None) -> dict[str, DjangoModel]:
    """Everything :func:`load_project` does but the database check."""
    module = settings_module or os.environ.get("DJANGO_SETTINGS_MODULE")
    if not module:
        raise ConfigError(
            "say which Django project to serve: --django mysite.settings, or set "
            "DJANGO_SETTINGS_MODULE"
        )
    try:
        import django
        from django.apps import apps
        from django.core.exceptions import ImproperlyConfigured
    except ImportError:
        raise ConfigError(
            "serving a Django project needs Django: pip install 'ablo-connector[django]'"
        ) from None
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as manage.py, run from the project's folder
    import_module(module, kind="Django settings module")
    os.environ["DJANGO_SETTINGS_MODULE"] = module
    try:
        django.setup()
    except ConfigError:
        raise
    except ImproperlyConfigured as error:
        raise ConfigError(f"Django settings {module!r}: {error}") from None
    except ImportError as error:
        # An entry of INSTALLED_APPS (or a module it imports) cannot be imported.
        raise ConfigError(
            f"Django settings {module!r}: cannot import {error.name or error}"
            f"{_where(error)} (is it installed, and listed in INSTALLED_APPS as its module?)"
        ) from None
    except Exception as error:
        raise ConfigError(
            f"Django project {module!r} failed to set up: {type(error).__name__}: {error}"
            f"{_where(error)}"
        ) from None
    _keep_our_loggers()
    if not apps.is_installed(APP):
        raise ConfigError(
            f'Django settings {module!r}: add "{APP}" to INSTALLED_APPS, then run '
            "`python manage.py migrate` to create the connector's tables"
        )
    models = served_models()
    served_database()  # an unknown alias is a mistake in the settings, said now
    return models


def _keep_our_loggers() -> None:
    """A project's LOGGING with ``disable_existing_loggers`` (Django's
    dictConfig, at setup) would silence the connector's own loggers, created
    before it: they log as the connector configured them."""
    import logging

    for name, found in logging.root.manager.loggerDict.items():
        if (name == "connector" or name.startswith("connector.")) and isinstance(
            found, logging.Logger
        ):
            found.disabled = False


def check_migrated(using: str = "default") -> None:
    """Refuse a database where the connector's migration has not run."""
    from django.db import DatabaseError, connections
    from django.db.migrations.loader import MigrationLoader

    try:
        loader = MigrationLoader(connections[using], ignore_no_migrations=True)
    except DatabaseError as error:
        raise DatabaseUnreachable(
            f"the Django database {using!r} did not answer: {_first_line(error)}"
        ) from None
    ours = sorted(key for key in loader.graph.nodes if key[0] == APP_LABEL)
    missing = [name for app, name in ours if (app, name) not in loader.applied_migrations]
    if missing:
        raise ConfigError(
            f"the Django database {using!r} lacks the connector's tables (migration "
            f"{APP_LABEL}.{missing[0]} is not applied): run `python manage.py migrate"
            + ("`" if using == "default" else f" --database {using}`")
        )


def database_secrets() -> list[str]:
    """The passwords in ``settings.DATABASES``, for the logs to redact."""
    from django.conf import settings

    databases: dict[str, Any] = getattr(settings, "DATABASES", {}) or {}
    return [
        str(options["PASSWORD"])
        for options in databases.values()
        if isinstance(options, dict) and options.get("PASSWORD")
    ]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _where(error: BaseException) -> str:
    """`` (at FILE, line N)``: the innermost frame in neither Django nor Python's imports."""
    import traceback

    import django

    library = os.path.dirname(django.__file__) + os.sep
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(("<frozen", library))
        and "importlib" not in frame.filename
        and os.path.abspath(frame.filename) != os.path.abspath(__file__)
    ]
    if not frames:
        return ""
    return f" (at {frames[-1].filename}, line {frames[-1].lineno})"
