"""The ``ablo-connector`` command's first lines, before the rest of the connector is imported.

Importing the connector takes about half a second. A Ctrl-C in that time,
or while a command reads its configuration, checks a database or dials,
must end the command with one line and the status a shell gives an
interrupted command (130), never a traceback or click's ``Aborted!``.

Raising ``KeyboardInterrupt`` cannot promise that: Python raises it
wherever the main thread happens to be, and libraries turn it into other
errors (pydantic-core reports one that lands while it builds a validator as
a ``SchemaError``) or lose it (in a weak reference's callback Python prints
"Exception ignored" and goes on starting). So this module, the entry
point of the console script and of ``python -m connector``, imports
nothing heavy (``import connector`` loads only the version: the package's
public names load on first use) and handles SIGINT itself from its first
line: one line, exit 130, at once. ``run`` and ``dev`` replace the handler
once they serve, and from then on SIGINT drains like SIGTERM (exit 0), as
the README says.

Python's own start-up, before this module runs (a few milliseconds while
the interpreter imports ``site`` and opens the script), is out of reach of
any package: an interrupt there is Python's to report.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

__all__ = ["main"]

EX_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command Ctrl-C stopped

_json_lines = False


def main() -> None:
    """Run the ``ablo-connector`` command."""
    global _json_lines
    _json_lines = _wants_json(sys.argv)
    signal.signal(signal.SIGINT, _interrupted)
    from connector.cli import main as command

    command(prog_name="ablo-connector")


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # Nothing has been served yet: a database rolls back what an unfinished
    # command (migrate) began, and a command that leaves files behind (dev's
    # demo database) removes them in a handler of its own first. The line is
    # built without importing anything: the import under way may be json's.
    os.write(2, (_interrupted_line() + "\n").encode())
    os._exit(EX_INTERRUPTED)


def _wants_json(argv: list[str]) -> bool:
    return os.environ.get("ABLO_LOG_FORMAT", "").strip().lower() == "json" or any(
        arg == "--log-format=json" or (arg == "--log-format" and following == "json")
        for arg, following in zip(argv, [*argv[1:], ""], strict=True)
    )


def _interrupted_line() -> str:
    if not _json_lines:
        return "ablo-connector: interrupted"
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    return (
        f'{{"time": "{stamp}", "level": "error", "logger": "connector.cli", '
        f'"message": "interrupted", "exit_status": {EX_INTERRUPTED}}}'
    )
