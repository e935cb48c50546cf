"""Small Django projects for the Django adapter's tests, each run in a
subprocess: Django sets up once per process, so every project gets its own.

:func:`write_settings` writes a settings module into a folder; :func:`python`
runs code there with it, :func:`manage` runs a ``manage.py`` command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tests.conftest import REPO

APP: Final = "connector.adapters.django"
APPS_FOLDER: Final = Path(__file__).resolve().parent / "django_apps"
UNSET: Final = object()


def django_database(url: str) -> dict[str, Any]:
    """``settings.DATABASES["default"]`` for a SQLAlchemy-style URL."""
    if url.startswith("sqlite:///"):
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": url.removeprefix("sqlite:///")}
    parts = urlsplit(url)
    engine = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}[parts.scheme]
    return {
        "ENGINE": f"django.db.backends.{engine}",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # Four-byte UTF-8 (emoji) on MySQL and MariaDB: Django's default before 5.2 is three.
        **({"OPTIONS": {"charset": "utf8mb4"}} if engine == "mysql" else {}),
    }


def write_settings(
    folder: Path,
    database: str,
    *,
    apps: tuple[str, ...] = (APP, "shop"),
    ablo: Any = UNSET,
    module: str = "proj_settings",
    extra: str = "",
) -> str:
    """Write ``folder/module.py``; returns the module's name."""
    lines = [
        f"DATABASES = {{'default': {django_database(database)!r}}}",
        f"INSTALLED_APPS = {list(apps)!r}",
        "DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'",
        "USE_TZ = True",
        "SECRET_KEY = 'tests'",
    ]
    if ablo is not UNSET:
        lines.append(f"ABLO = {ablo!r}")
    (folder / f"{module}.py").write_text("\n".join(lines) + "\n" + extra)
    return module


def environment(settings: str | None = "proj_settings") -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS_FOLDER), str(REPO)])}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if settings is not None:
        env["DJANGO_SETTINGS_MODULE"] = settings
    return env


def python(
    folder: Path, code: str, settings: str | None = "proj_settings"
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter in ``folder``, with the project's settings."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=folder,
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def manage(
    folder: Path, *args: str, settings: str = "proj_settings"
) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` for the project whose settings are in ``folder``."""
    code = (
        "import sys; from django.core.management import execute_from_command_line; "
        f"execute_from_command_line(['manage.py', *{list(args)!r}])"
    )
    return python(folder, code, settings)
