"""What does the operator type? The ``ablo-connector`` command.

Each command only builds a :class:`~connector.daemon.config.Config` (or a
dev engine) from flags and environment variables, hands it to the library,
and maps the outcome to an exit status. Usage and configuration mistakes
get one line on stderr, never a traceback.

- :mod:`.run`: ``run`` and ``check``, for operators;
- :mod:`.migrate`: ``migrate``, for the SQL adapter's tables;
- :mod:`.dev`: ``dev``, ``dev-engine`` and ``request``, for developers;
- :mod:`.options`: options generated from ``Config``, grouped ``--help``;
- :mod:`.sources`: the handler or the SQL adapter to serve;
- :mod:`.check`: the steps of ``check``;
- :mod:`.verify`: ``verify``, the guarantees a source keeps.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from .._version import __version__
from ..ops.logs import json_line
from .dev import dev, dev_engine, request
from .migrate import migrate
from .options import interrupted, wants_json_logs
from .run import check, run
from .verify import verify

__all__ = ["main"]


def _installed_from() -> str:
    """Where this copy came from: a wheel, a folder (editable or not), with its path."""
    package = Path(__file__).resolve().parents[1]
    try:
        direct = metadata.distribution("ablo-connector").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return f"not installed, imported from {package}"
    origin = ""
    if direct:
        info = json.loads(direct)
        editable = info.get("dir_info", {}).get("editable", False)
        origin = f"{'editable install of' if editable else 'installed from'} {info.get('url')}; "
    return f"{origin}package at {package}"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(
            f"ablo-connector {__version__} ({_installed_from()}; "
            f"Python {platform.python_version()})"
        )
        ctx.exit()


def _json_asked(argv: list[str]) -> bool:
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        if flag == "--log-format=json" or (flag == "--log-format" and value == "json"):
            return True
    return wants_json_logs()


class _Main(click.Group):
    """The command group; with JSON logs, usage mistakes are JSON lines too.

    A Ctrl-C while a command parses its options or runs, before it handles
    signals itself, is one line and exit 130 (:func:`.options.interrupted`):
    caught here, below click, which would print ``Aborted!`` and exit 1.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            interrupted()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            interrupted()
        except click.ClickException as error:
            if not _json_asked(sys.argv[1:]):
                raise
            click.echo(json_line(error.format_message(), exit_status=error.exit_code), err=True)
            ctx.exit(error.exit_code)


@click.group(
    cls=_Main,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_print_version,
    help="Show the version and where it was installed from, then exit.",
)
def main() -> None:
    """Serve an Ablo Data Source from a private network over one outbound WebSocket.

    \b
    Typical use:
      ablo-connector run --handler mypkg.source:MySource      (key in ABLO_API_KEY)
      ablo-connector run --database-url postgresql://…        (no handler code)
      ablo-connector dev                                      (try it locally, no account)

    \b
    Shell completion (bash; zsh and fish alike):
      eval "$(_ABLO_CONNECTOR_COMPLETE=bash_source ablo-connector)"
    """


for command in (run, check, verify, migrate, dev, dev_engine, request):
    main.add_command(command)
