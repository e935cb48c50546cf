"""The public face: what a handler author and an embedding program import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import connector
from tests.conftest import REPO

PUBLIC = {
    # the handler API
    "DataSource", "RequestContext", "SourceError", "MaybeAwaitable", "Row",
    # request and answer types
    "CommitEcho", "CommitRequest", "CommitResult", "Condition", "Delta", "Event", "EventsPage",
    "ListPage", "ListQuery", "Operation", "OperationName", "Scope",
    # embedding
    "Config", "Connector", "ConnectorStatus", "State", "run_until_signalled",
    # serving the same handler as an inbound webhook
    "Answer", "Dispatcher", "Verifier", "VerifiedRequest", "sign_request", "verify_request",
    # the error tree
    "ConnectorError", "ConfigError", "ProtocolError", "SignatureError", "ConnectFailure",
    "ConnectionLost", "HandshakeRejected", "AuthenticationFailed", "RateLimited", "Superseded",
    "ProtocolMismatch",
    "__version__",
}  # fmt: skip


def test_public_names_are_pinned() -> None:
    assert set(connector.__all__) == PUBLIC
    for name in connector.__all__:
        assert getattr(connector, name) is not None, name


def test_every_exception_is_in_one_tree() -> None:
    errors = [getattr(connector, name) for name in PUBLIC if name.endswith(("Error", "Failed"))]
    errors += [connector.ConnectionLost, connector.RateLimited, connector.Superseded]
    for error in errors:
        assert issubclass(error, connector.ConnectorError), error


def test_the_package_is_typed() -> None:
    from importlib import resources

    assert resources.files("connector").joinpath("py.typed").is_file()


def test_handler_return_types_are_checked(tmp_path: Path) -> None:
    """``MaybeAwaitable`` is a real type: mypy accepts sync and async handlers
    that return what the dispatcher takes, and refuses one that does not."""
    good = tmp_path / "good.py"
    good.write_text(
        "from typing import Any\n"
        "from connector import DataSource, ListPage, ListQuery, RequestContext\n"
        "class Sync(DataSource):\n"
        "    def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:\n"
        "        return None\n"
        "class Async(DataSource):\n"
        "    async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:\n"
        "        return ListPage(rows=[])\n"
    )
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from connector import DataSource, RequestContext\n"
        "class Wrong(DataSource):\n"
        "    async def load(self, model: str, id: str, ctx: RequestContext) -> int:\n"
        "        return 1\n"
    )

    def mypy(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
            # An editable install is an import hook mypy cannot follow: point it at the tree.
            env={**os.environ, "MYPYPATH": str(REPO)},
        )

    assert mypy(good).returncode == 0, mypy(good).stdout
    result = mypy(bad)
    assert result.returncode == 1 and 'Return type "Coroutine[Any, Any, int]"' in result.stdout
