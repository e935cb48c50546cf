"""What the tests share: request builders, and real processes and sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from connector import Answer, Dispatcher
from connector.wire.frames import RequestFrame
from connector.wire.signing import Verifier, sign_request
from tests.conftest import REPO
from tests.postgres import free_port as free_port  # one definition, shared with bench/

API_KEY = "sk_test_helpers_0123456789abcdef"
_ids = itertools.count(1)


def signed_frame(
    body: dict[str, Any] | str,
    *,
    api_key: str = API_KEY,
    message_id: str | None = None,
    timestamp: int | None = None,
    request_id: str | None = None,
) -> RequestFrame:
    text = body if isinstance(body, str) else json.dumps(body)
    n = next(_ids)
    headers = sign_request(
        api_key,
        message_id or f"msg_{n}",
        text,
        int(time.time()) if timestamp is None else timestamp,
    )
    headers["content-type"] = "application/json"
    return RequestFrame(
        id=request_id or f"req_{n}",
        method="POST",
        url="https://source.ablo.invalid/v1/source",
        headers=headers,
        body=text,
    )


@contextlib.asynccontextmanager
async def scripted_engine(
    script: Callable[[ServerConnection], Awaitable[None]],
) -> AsyncIterator[str]:
    """A bare engine on 127.0.0.1 that runs ``script`` per connection; yields its base URL."""
    async with serve(
        script, "127.0.0.1", 0, subprotocols=[Subprotocol("ablo.source.v1")]
    ) as server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def dispatch_frame(dispatcher: Dispatcher, frame: RequestFrame) -> Answer:
    """What the connection does with one request frame: the dispatcher's answer."""
    return await dispatcher.dispatch(frame.method, frame.headers, frame.body, request_id=frame.id)


class SourceClient:
    """A data source behind a real dispatcher: signed request bodies in,
    (status, decoded body) out."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.dispatcher = Dispatcher(source, Verifier(API_KEY))

    async def __call__(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = await dispatch_frame(self.dispatcher, signed_frame(body))
        return response.status, json.loads(response.body)

    async def ok(self, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self(body)
        assert status == 200, answer
        return answer

    async def commit(self, correlation_id: str, *operations: dict[str, Any], **extra: Any) -> tuple[int, dict[str, Any]]:  # fmt: skip
        return await self(
            {
                "type": "commit",
                "correlationId": correlation_id,
                "operations": list(operations),
                **extra,
            }
        )

    async def load(self, model: str, id: str) -> Any:
        return (await self.ok({"type": "load", "model": model, "id": id}))["row"]

    async def events_after(self, cursor: str | None) -> list[dict[str, Any]]:
        """Every event after ``cursor``, page by page."""
        found: list[dict[str, Any]] = []
        while True:
            body: dict[str, Any] = {"type": "events", "limit": 1000}
            if cursor is not None:
                body["cursor"] = cursor
            page = (await self.ok(body))["events"]
            if not page:
                return found
            found += page
            cursor = page[-1]["cursor"]

    async def last_cursor(self) -> str | None:
        events = await self.events_after(None)
        return events[-1]["cursor"] if events else None

    async def close(self) -> None:
        self.dispatcher.close()
        await self.source.aclose()


# ------------------------------------------------ processes and sockets


async def wait_for_port(port: int, timeout: float = 10.0) -> float:
    """Wait until something accepts on ``port``; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {port}") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return time.monotonic()


async def eventually(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


class Process:
    """A CLI subprocess with its output captured to files (no pipe to fill)."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "connector", *args]
        # PYTHONFAULTHANDLER: a process that does not exit in time is sent
        # SIGABRT by wait(), and prints every thread's stack before it dies.
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",
            **(env or {}),
        }
        self._dir = tempfile.TemporaryDirectory()
        self.stdout_path = Path(self._dir.name) / "stdout"
        self.stderr_path = Path(self._dir.name) / "stderr"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Process:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=asyncio.subprocess.DEVNULL,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    async def wait(self, timeout: float = 30.0) -> int:
        """The exit status; a process still running after ``timeout`` fails
        the test with its output and the stacks it was stuck in."""
        assert self.proc is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
        except TimeoutError:
            self.signal(signal.SIGABRT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
            raise AssertionError(
                f"the process did not exit within {timeout} s; it printed:\n{self.output()}"
            ) from None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    async def wait_for_output(self, text: str, timeout: float = 30.0) -> str:
        """Wait until the process has printed ``text``; returns its output so far."""
        deadline = time.monotonic() + timeout
        while text not in (output := self.output()):
            if self.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; the process printed:\n{output}")
            await asyncio.sleep(0.02)
        return output

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            await self.wait()
        self._dir.cleanup()


@contextlib.asynccontextmanager
async def process(args: Sequence[str], env: dict[str, str] | None = None) -> AsyncIterator[Process]:
    proc = await Process(args, env).start()
    try:
        yield proc
    finally:
        await proc.stop()


def connector_args(base_url: str, handler: str, *extra: str) -> list[str]:
    return ["run", "--base-url", base_url, "--handler", handler, *extra]


# ------------------------------------------------ databases


# The table the SQL adapter's tests and processes serve, on each database.
TASKS_DDL = {
    "sqlite": """CREATE TABLE tasks (
        id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT 0,
        priority INTEGER, due_at TIMESTAMP, archived_at TIMESTAMP, estimate REAL)""",
    "postgresql": """CREATE TABLE tasks (
        id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT false,
        priority INTEGER, due_at TIMESTAMPTZ, archived_at TIMESTAMPTZ, estimate DOUBLE PRECISION)""",
    # MySQL and MariaDB (a key cannot be TEXT; BOOLEAN is TINYINT(1)).
    "mysql": """CREATE TABLE tasks (
        id VARCHAR(64) PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT false,
        priority INTEGER, due_at DATETIME(6), archived_at DATETIME(6), estimate DOUBLE)""",
}


def execute(url: str, *statements: str) -> list[Any]:
    """Run SQL outside the adapter (as another client of the database would)."""
    from connector.adapters.sql import create_database_engine

    engine = create_database_engine(url)
    try:
        with engine.begin() as connection:
            results = [connection.exec_driver_sql(s) for s in statements]
            return [r.all() if r.returns_rows else None for r in results]
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_database(request: Any, dialect: str, sqlite_file: Path) -> Iterator[str]:
    """The URL of a new, empty database of ``dialect``, dropped afterwards:
    ``sqlite_file`` (not created here), or a database of its own on the
    session's private PostgreSQL or MariaDB (their fixtures start them once)."""
    if dialect == "sqlite":
        yield f"sqlite:///{sqlite_file}"
        return
    from tests import mariadb, postgres

    made = mariadb if dialect == "mariadb" else postgres
    server = request.getfixturevalue("mariadb_server" if made is mariadb else "postgres_server")
    url = made.create_database(server)
    try:
        yield url
    finally:
        made.drop_database(server, url)
