"""How does a flag become a setting? Options generated from :class:`Config`.

Every option of ``run`` that is a connector setting comes from a field of
:class:`~connector.daemon.config.Config` (its default, flag, environment
variable, help text, group and bounds), so each default is written once.
The options that are not settings (the key, what to serve, logging) are
declared here. ``--help`` prints options by group.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import click

from ..daemon.config import Config, Group, Setting, credential_path, read_api_key_file
from ..errors import EX_CONFIG, EX_INTERRUPTED, ConfigError
from ..ops.logs import installed_formatter, json_line

__all__ = [
    "GroupedCommand",
    "LOG_LEVELS",
    "config_options",
    "fail",
    "from_command_line",
    "guard_inspector_token",
    "interrupted",
    "key_options",
    "load_env_file",
    "logging_options",
    "not_both",
    "option",
    "origin",
    "resolve_api_key",
]

_F = TypeVar("_F", bound=Callable[..., Any])

GROUP_TITLES: Final[dict[str, str]] = {
    "source": "What to serve",
    "engine": "The engine",
    "limits": "Limits",
    "operations": "Operations",
    "logging": "Logging",
    "other": "Other options",
}
LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


def fail(message: str, status: int = EX_CONFIG) -> NoReturn:
    """One line on stderr and the exit status: how every start-up mistake ends.

    The line is a JSON object, as the logs are, when they are JSON
    (``--log-format json`` or ``ABLO_LOG_FORMAT=json``).
    """
    click.echo(error_line(message, status), err=True)
    sys.exit(status)


def interrupted() -> NoReturn:
    """Ctrl-C before the command handles signals itself: one line, exit 130.

    A running connector handles SIGINT as SIGTERM (it drains); before that,
    while it starts, an interrupt is a user's change of mind, not an error.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C changes nothing
    if wants_json_logs():
        click.echo(json_line("interrupted", exit_status=EX_INTERRUPTED), err=True)
    else:
        click.echo("ablo-connector: interrupted", err=True)
    sys.exit(EX_INTERRUPTED)


def error_line(message: str, status: int) -> str:
    """The line :func:`fail` prints (and, for a usage error, the CLI's entry point)."""
    if wants_json_logs():
        return json_line(message, exit_status=status)
    return f"ablo-connector: error: {message}"


def wants_json_logs() -> bool:
    """Whether the logs are JSON, or will be once the options are read."""
    formatter = installed_formatter()
    if formatter is not None:
        return formatter.is_json
    ctx = click.get_current_context(silent=True)
    chosen = ctx.params.get("log_format") if ctx is not None else None
    return str(chosen or os.environ.get("ABLO_LOG_FORMAT", "")).strip().lower() == "json"


class GroupedOption(click.Option):
    """An option that says which ``--help`` section it belongs to."""

    def __init__(self, *args: Any, group: str = "other", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists options in sections, in :data:`GROUP_TITLES` order."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", "other"), []).append(record)
        for group, title in GROUP_TITLES.items():
            if group in sections:
                with formatter.section(title):
                    formatter.write_dl(sections[group])


def option(
    *decls: str, group: str = "other", env: str | None = None, **kwargs: Any
) -> Callable[[_F], _F]:
    """A grouped option that names its environment variable and default in ``--help``."""
    if env is not None:
        kwargs.update(envvar=env, show_envvar=True)
    kwargs.setdefault("show_default", "default" in kwargs and not kwargs.get("is_flag"))
    return click.option(*decls, cls=GroupedOption, group=group, **kwargs)


# ---------------------------------------------------------------- settings


def _settings(only: set[str] | None = None) -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    for item in dataclasses.fields(Config):
        spec = item.metadata.get("setting")
        if spec is not None and (only is None or item.name in only):
            yield item, spec


def _base_type(annotation: Any) -> Any:
    """``int`` for ``int | None``: the type a value has when it is given."""
    if typing.get_origin(annotation) is typing.Union or isinstance(annotation, type(int | None)):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _click_type(annotation: Any, spec: Setting) -> Any:
    base = _base_type(annotation)
    if base is int:
        return click.IntRange(min=None if spec.minimum is None else int(spec.minimum))
    if base is float:
        return click.FloatRange(min=spec.minimum, min_open=spec.minimum_open)
    return str


_METAVARS: Final[dict[Any, str]] = {float: "SECONDS", int: "N"}


def _seconds_list(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``0,1,2.5`` as a tuple of seconds."""
    if value is None or isinstance(value, tuple):
        return value
    try:
        seconds = tuple(float(part) for part in str(value).split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} must be comma-separated seconds") from None
    if any(second < 0 for second in seconds):
        raise click.BadParameter(f"{value!r}: seconds must not be negative")
    return seconds


def config_options(
    only: set[str] | None = None, *, defaults: Mapping[str, Any] | None = None
) -> Callable[[_F], _F]:
    """Options for the :class:`Config` fields that have a command-line form;
    ``defaults`` overrides a field's default for this command (``dev``'s)."""
    hints = typing.get_type_hints(Config)

    def decorate(command: _F) -> _F:
        for item, spec in reversed(list(_settings(only))):
            kind = hints[item.name]
            default = (defaults or {}).get(item.name, item.default)
            kwargs: dict[str, Any] = {"help": spec.help, "hidden": spec.hidden}
            flag = spec.flag
            if kind is bool:
                kwargs["is_flag"] = True
                if default:  # on unless told otherwise: it needs a way to say so
                    flag = f"{spec.flag}/--no-{spec.flag.removeprefix('--')}"
                    kwargs["default"] = True
            else:
                kwargs["type"] = _click_type(kind, spec)
                kwargs["metavar"] = spec.metavar or _METAVARS.get(_base_type(kind), "TEXT")
                if typing.get_origin(kind) is tuple:
                    kwargs["callback"] = _seconds_list
                    kwargs["metavar"] = "SECONDS,..."
                if default is not None:
                    kwargs["default"] = (
                        ",".join(f"{d:g}" for d in default)
                        if isinstance(default, tuple)
                        else default
                    )
            command = option(flag, item.name, group=spec.group, env=spec.env, **kwargs)(command)
        return command

    return decorate


def from_command_line(api_key: str, options: Mapping[str, Any]) -> Config:
    """A :class:`Config` from the key and the values of :func:`config_options`."""
    values = {
        item.name: options[item.name]
        for item, _ in _settings()
        if item.name in options and options[item.name] not in (None, "")
    }
    return Config(api_key=api_key, **values)


# ---------------------------------------------------------------- the key


def key_options(command: _F) -> _F:
    command = option(
        "--api-key-file",
        group="engine",
        env="ABLO_API_KEY_FILE",
        type=click.Path(dir_okay=False),
        help="Read the key from this file (Docker secret, systemd LoadCredential=).",
    )(command)
    return option(
        "--api-key",
        group="engine",
        env="ABLO_API_KEY",
        help="Secret API key (sk_test_… / sk_live_…). Prefer the env var or --api-key-file.",
    )(command)


def on_command_line(ctx: click.Context, name: str) -> bool:
    """Whether option ``name`` was typed (where ``ps`` shows it), not read from the environment."""
    return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE


_ENV_FILE_META: Final = "ablo_connector.env_file"


def origin(ctx: click.Context, name: str) -> str:
    """Where option ``name``'s value came from, in words an operator can act on:
    ``--handler`` (typed), ``ABLO_CONNECTOR_HANDLER`` (the environment), or
    ``ABLO_CONNECTOR_HANDLER from the env file PATH``."""
    param = next((p for p in ctx.command.params if p.name == name), None)
    if param is None:
        return name
    flag = max(param.opts, key=len)
    if ctx.get_parameter_source(name) is not click.core.ParameterSource.ENVIRONMENT:
        return flag
    variable = param.envvar if isinstance(param.envvar, str) else flag
    env_file: tuple[str, frozenset[str]] | None = ctx.meta.get(_ENV_FILE_META)
    if env_file is not None and variable in env_file[1]:
        return f"{variable} from the env file {env_file[0]}"
    if os.environ.get("INVOCATION_ID"):  # systemd sets it for the processes of a unit
        return f"{variable} from the environment (the unit's Environment= or EnvironmentFile=)"
    return f"{variable} from the environment"


def not_both(ctx: click.Context, first: str, second: str) -> ConfigError:
    """The mistake of giving two options that exclude each other, saying where each came from."""
    return ConfigError(f"give {origin(ctx, first)} or {origin(ctx, second)}, not both")


def resolve_api_key(
    ctx: click.Context,
    api_key: str | None,
    api_key_file: str | None,
    *,
    warn: Callable[[str], None],
) -> str:
    """The key from exactly one place: flag or env, a file, or systemd's credential."""
    if api_key and api_key_file:
        raise not_both(ctx, "api_key", "api_key_file")
    if api_key_file:
        return read_api_key_file(api_key_file)
    if api_key:
        if on_command_line(ctx, "api_key"):
            warn(
                "the API key was given on the command line, where other local users can see it "
                "in the process list; prefer ABLO_API_KEY or --api-key-file"
            )
        return api_key
    found = credential_path()
    if found is not None:
        return read_api_key_file(found)
    raise ConfigError(
        "an API key is required: set ABLO_API_KEY, or pass --api-key-file (or --api-key)"
    )


def guard_inspector_token(
    ctx: click.Context,
    config: Config,
    add_secret: Callable[[str], None],
    *,
    warn: Callable[[str], None],
) -> None:
    """Keep the inspector's token out of every line, and say so when ``ps`` shows it."""
    if config.inspect_token is None:
        return
    add_secret(config.inspect_token)
    if on_command_line(ctx, "inspect_token"):
        warn(
            "the inspector token was given on the command line, where other local users can "
            "see it in the process list; prefer ABLO_INSPECT_TOKEN"
        )


# ---------------------------------------------------------------- logging


def logging_options(command: _F) -> _F:
    command = option(
        "--log-format",
        group="logging",
        env="ABLO_LOG_FORMAT",
        type=click.Choice(["text", "json"]),
        default="text",
        help="text: one readable line per event; json: one JSON object per line, for a log "
        "pipeline.",
    )(command)
    return option(
        "--log-level",
        group="logging",
        env="ABLO_LOG_LEVEL",
        type=LOG_LEVELS,
        default="info",
        help="info: connection changes and problems (an idle, healthy connector is silent); "
        "debug: one line per request; warning/error: problems only.",
    )(command)


# ---------------------------------------------------------------- env file


def load_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Set the variables of a systemd-style env file that the environment does not set.

    The format is systemd's ``EnvironmentFile=``: ``NAME=value`` lines,
    ``#`` comments, an optional ``export``, values optionally in single or
    double quotes. Returns what it set.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the env file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the env file {path} is not UTF-8 text") from None
    loaded: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        line = line.removeprefix("export ").lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "").isalnum() or name[0].isdigit():
            raise ConfigError(f"{path}, line {number}: expected NAME=value")
        value = value.strip()
        if value[:1] in ("'", '"'):
            try:
                parts = shlex.split(value)
            except ValueError:
                raise ConfigError(f"{path}, line {number}: unbalanced quotes") from None
            value = parts[0] if parts else ""
        if not os.environ.get(name):  # as for click, an empty variable is an unset one
            os.environ[name] = value
            loaded[name] = value
    return loaded


def _read_env_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        try:
            loaded = load_env_file(value)
        except ConfigError as error:
            fail(str(error))
        ctx.meta[_ENV_FILE_META] = (value, frozenset(loaded))
    return value


def env_file_option(command: _F) -> _F:
    # Eager, so the file's variables are set before any other option reads
    # the environment; the environment itself still wins.
    return option(
        "--env-file",
        group="operations",
        env="ABLO_ENV_FILE",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_read_env_file,
        help="Read NAME=value settings from this file first (systemd EnvironmentFile= format); "
        "variables already in the environment win.",
    )(command)


def group_of(settings: set[Group]) -> set[str]:
    """The names of the :class:`Config` fields in these groups (for other commands' options)."""
    return {item.name for item, spec in _settings() if spec.group in settings}
