"""What does the connector serve? The user's handler, the SQL adapter, or a
Django project's models."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from ..errors import ConfigError
from ..serve.datasource import DataSource
from ..serve.loader import load_handler
from .options import not_both, on_command_line, option, origin

if TYPE_CHECKING:
    from ..adapters.django.served import DjangoModel
    from ..adapters.sql import SQLSource

__all__ = [
    "build_source",
    "check_source_choice",
    "django_option",
    "django_settings_of",
    "django_source",
    "guard_url",
    "guard_url_options",
    "outbox_retention_option",
    "pool_size_option",
    "source_options",
    "sql_source",
]

log = logging.getLogger("connector.cli")

_F = TypeVar("_F", bound=Callable[..., Any])


def source_options(
    handler_help: str,
    database_help: str = "Serve this database with no handler code (sqlite:///app.db, "
    "postgresql://…, mysql://…).",
) -> Callable[[_F], _F]:
    """``--handler``, ``--database-url`` and ``--models``."""

    def decorate(command: _F) -> _F:
        command = option(
            "--models",
            "models_path",
            group="source",
            env="ABLO_MODELS",
            metavar="FILE|MODULE[:BASE]",
            help="Which tables serve which models: a model map (models.toml), or the "
            "application's SQLAlchemy classes (myapp.models:Base, or a module). Default: every "
            "table, by name.",
        )(command)
        command = option(
            "--database-url",
            group="source",
            env="ABLO_DATABASE_URL",
            metavar="URL",
            help=database_help,
        )(command)
        return option(
            "--handler",
            "handler_spec",
            group="source",
            env="ABLO_CONNECTOR_HANDLER",
            metavar="MODULE:ATTR",
            help=handler_help,
        )(command)

    return decorate


def django_option(command: _F) -> _F:
    """``--django``: serve a Django project's models (``run``, ``dev`` and ``check``)."""
    return option(
        "--django",
        "django_settings",
        group="source",
        env="ABLO_DJANGO",
        metavar="SETTINGS",
        help="Serve the models settings.ABLO names in this Django project (mysite.settings; "
        "run from the folder that holds manage.py). Default, when neither --handler nor "
        "--database-url is given: DJANGO_SETTINGS_MODULE.",
    )(command)


def django_settings_of(
    handler_spec: str | None, database_url: str | None, django_settings: str | None
) -> str | None:
    """The Django settings module to serve: ``--django``, or, when no other
    source is named, ``DJANGO_SETTINGS_MODULE`` (as ``manage.py`` reads it)."""
    if django_settings or handler_spec or database_url:
        return django_settings
    return os.environ.get("DJANGO_SETTINGS_MODULE") or None


def pool_size_option(command: _F) -> _F:
    """``--pool-size``: the SQL adapter's database connections."""
    return option(
        "--pool-size",
        group="source",
        env="ABLO_DATABASE_POOL_SIZE",
        type=click.IntRange(1),
        metavar="N",
        default=None,
        help=(
            "Database connections the SQL adapter keeps open (with --database-url; default 10, "
            "20 on MySQL and MariaDB); on PostgreSQL, MySQL and MariaDB up to N for reads and N "
            "for commits."
        ),
    )(command)


_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s`` or plain seconds, as seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 7d, 12h, 30m, 90s)") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise click.BadParameter(f"{text!r} is not a duration of 0 or more")
    return seconds


def outbox_retention_option(command: _F) -> _F:
    """``--outbox-retention``: how long the SQL adapter keeps events the engine has read."""
    return option(
        "--outbox-retention",
        group="source",
        env="ABLO_OUTBOX_RETENTION",
        metavar="DURATION",
        default="7d",
        help=(
            "With --database-url: delete outbox events older than this (7d, 12h, 30m, 90s) "
            "once the engine has paged past them, and ledger rows past their expiry, in "
            "small batches."
        ),
    )(command)


def check_source_choice(
    ctx: click.Context,
    handler_spec: str | None,
    database_url: str | None,
    models_path: str | None,
    django_settings: str | None = None,
) -> None:
    """Refuse two sources at once (a handler, a database, a Django project), or a
    map without a database, saying where each value came from (the flag, the
    environment, or an env file)."""
    if handler_spec and database_url:
        raise not_both(ctx, "handler_spec", "database_url")
    if django_settings and handler_spec:
        raise not_both(ctx, "handler_spec", "django_settings")
    if django_settings and database_url:
        raise not_both(ctx, "database_url", "django_settings")
    if models_path and not database_url:
        raise ConfigError(f"{origin(ctx, 'models_path')} needs --database-url")


def build_source(
    ctx: click.Context,
    handler_spec: str | None,
    database_url: str | None,
    models_path: str | None,
    *,
    add_secret: Callable[[str], None] = lambda _: None,
    pool_size: int | None = None,
    outbox_retention: str | None = None,
    django_settings: str | None = None,
) -> DataSource:
    """The user's handler, the SQL adapter over ``database_url``, or the Django
    project of ``django_settings``, ready to serve."""
    check_source_choice(ctx, handler_spec, database_url, models_path, django_settings)
    if handler_spec:
        return load_handler(handler_spec)
    if django_settings:
        return django_source(django_settings, add_secret)
    if not database_url:
        raise ConfigError(
            "say what to serve: --handler package.module:ClassName, --database-url URL, "
            "or --django mysite.settings"
        )
    from sqlalchemy.exc import OperationalError

    from ..adapters.sql import shown_url

    source = sql_source(database_url, models_path, add_secret, pool_size)
    if outbox_retention is not None:
        try:
            source.outbox_retention = _duration(outbox_retention)
        except click.BadParameter as error:
            raise ConfigError(f"--outbox-retention: {error.message}") from None
    shown = shown_url(source.engine.url)
    try:
        source.prepare()
    except OperationalError:
        # Not a configuration mistake: the database may be restarting. Serve
        # anyway (requests answer 503 until it is back) instead of exiting.
        log.warning(
            "the database at %s is unreachable; requests answer 503 until it is back", shown
        )
    return source


def django_project(
    settings_module: str, add_secret: Callable[[str], None]
) -> tuple[dict[str, DjangoModel], Exception | None]:
    """The project's served models, once it is set up and its database
    passwords joined the redactions, and why its database cannot be reached
    (``None`` when it can)."""
    from ..adapters.django.project import (
        DatabaseUnreachable,
        check_migrated,
        database_secrets,
        setup_project,
    )
    from ..adapters.django.settings import served_database

    models = setup_project(settings_module)
    for secret in database_secrets():
        add_secret(secret)
    try:
        check_migrated(served_database())
    except DatabaseUnreachable as error:
        return models, error
    return models, None


def django_source(settings_module: str, add_secret: Callable[[str], None]) -> DataSource:
    """The Django adapter over the project of ``settings_module``. An
    unreachable database is served anyway (requests answer 503 until it is
    back), as with --database-url."""
    models, unreachable = django_project(settings_module, add_secret)
    if unreachable is not None:
        log.warning("%s; requests answer 503 until it is back", unreachable)
    from ..adapters.django.settings import served_database
    from ..adapters.django.source import DjangoSource

    using = served_database()
    if unreachable is None:
        _tell_capture(models, using)
    return DjangoSource(models, using=using)


def _tell_capture(models: Mapping[str, DjangoModel], using: str) -> None:
    """Which served models the database captures, and (at WARNING) each
    capture that no longer matches its model, as the SQL adapter's run says."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..adapters.django.capture import drift

    try:
        captured, drifted = drift(models, using)
    except (ConfigError, SQLAlchemyError) as error:
        log.warning("could not read the capture's state: %s", error)
        return
    for name in captured:
        log.info("model %r is captured: the database records its writes", name)
    for line in drifted.values():
        log.warning("%s", line)


def sql_source(
    database_url: str,
    models_path: str | None,
    add_secret: Callable[[str], None] = lambda _: None,
    pool_size: int | None = None,
) -> SQLSource:
    """The SQL adapter for a URL and an optional model map (a TOML file or the
    application's classes); its password joins the redactions."""
    from ..adapters.sql import SQLSource, load_model_map
    from ..adapters.sql import database_url as parse_database_url

    guard_url(database_url, "--database-url", add_secret)
    url = parse_database_url(database_url)
    if url.password:
        add_secret(str(url.password))
    return SQLSource(
        url,
        load_model_map(models_path) if models_path else None,
        pool_size=pool_size,
    )


#: The options whose value is a URL that may hold a password, each with the
#: variable that keeps the password out of the process list.
_URL_OPTIONS: Final = {"database_url": "ABLO_DATABASE_URL", "ha_lock": "ABLO_HA_LOCK"}


def guard_url_options(ctx: click.Context, add_secret: Callable[[str], None]) -> None:
    """What every command does first with the URLs it was given, in one place.

    Each URL's password joins the redactions, a URL a parser would misread
    is refused (:func:`guard_url`), and a password typed on the command line,
    where other local users can read it in the process list, draws a warning.
    """
    from .._redact import has_password

    for name, variable in _URL_OPTIONS.items():
        url = ctx.params.get(name)
        if not isinstance(url, str) or not url:
            continue
        flag = "--" + name.replace("_", "-")
        guard_url(url, flag, add_secret)
        if on_command_line(ctx, name) and has_password(url):
            log.warning(
                "the password of %s was given on the command line, where other local users "
                "can see it in the process list; prefer %s",
                flag,
                variable,
            )


def guard_url(url: str, flag: str, add_secret: Callable[[str], None]) -> None:
    """Register the URL's password for redaction, and refuse one that would leak.

    A raw ``@`` in a password makes every parser take the rest of it for the
    host, which then appears in error messages: refuse it before any parser
    sees it.
    """
    from .._redact import unescaped_at, url_secrets

    for secret in url_secrets(url):
        add_secret(secret)
    if unescaped_at(url):
        raise ConfigError(
            f"{flag}: the URL has more than one '@'; percent-encode '@' in the user name or "
            "password as %40"
        )
