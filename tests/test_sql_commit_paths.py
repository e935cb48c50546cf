"""Commits on PostgreSQL, MySQL and MariaDB run on the adapter's own
connections, statement by statement as SQLAlchemy would run them
(connector/adapters/sql/commits.py and the dialects' own). This runs the
same few hundred commits, every operation type with NULLs, server
defaults, numerics, JSON, timestamps, replays and refusals, through both
paths against two copies of one database, and holds them to the same
answers, the same rows, the same ledger and the same outbox."""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.sql import SQLSource
from connector.adapters.sql.commits import DELETE, INSERT
from tests.helpers import execute, fresh_database
from tests.test_sql_adapter import Client, prepare

MODELS = {"models": {"item": {"table": "items"}}}

ITEMS = {
    "postgresql": """CREATE TABLE items (
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL,
  note TEXT,
  quantity INTEGER NOT NULL DEFAULT 7,
  small SMALLINT,
  price NUMERIC(10, 2),
  ratio DOUBLE PRECISION,
  meta JSONB,
  extra JSON,
  due_at TIMESTAMPTZ,
  local_at TIMESTAMP,
  day DATE,
  done BOOLEAN NOT NULL DEFAULT false,
  code TEXT UNIQUE,
  made_at TIMESTAMPTZ NOT NULL DEFAULT '2020-01-02T03:04:05Z',
  archived_at TIMESTAMPTZ
)""",
    "mariadb": """CREATE TABLE items (
  id VARCHAR(64) PRIMARY KEY,
  title TEXT NOT NULL,
  note TEXT,
  quantity INTEGER NOT NULL DEFAULT 7,
  small SMALLINT,
  price DECIMAL(10, 2),
  ratio DOUBLE,
  meta JSON,
  extra JSON,
  due_at TIMESTAMP(6) NULL,
  local_at DATETIME(6),
  day DATE,
  done BOOLEAN NOT NULL DEFAULT false,
  code VARCHAR(64) UNIQUE,
  made_at DATETIME(6) NOT NULL DEFAULT '2020-01-02 03:04:05',
  archived_at DATETIME(6)
) ENGINE=InnoDB""",
}
# What each database's rows, ledger and outbox hold, as text where the
# driver's types differ.
CONTENTS = {
    "postgresql": (
        "SELECT id, title, note, quantity, small, price::text, ratio, meta::text, extra::text, "
        "due_at, local_at, day, done, code, made_at, archived_at IS NOT NULL FROM items ORDER BY id",
        "SELECT client_tx_id, request_hash, response::text, expires_at - created_at "
        "FROM ablo_idempotency ORDER BY client_tx_id",
        "SELECT id, model, entity_id, type, data::text, organization_id, client_tx_id, "
        "correlation_id, transaction_id FROM ablo_outbox ORDER BY cursor",
    ),
    "mariadb": (
        "SELECT id, title, note, quantity, small, CAST(price AS CHAR), ratio, meta, extra, "
        "due_at, local_at, day, done, code, made_at, archived_at IS NOT NULL FROM items ORDER BY id",
        "SELECT client_tx_id, request_hash, response, "
        "TIMESTAMPDIFF(MICROSECOND, created_at, expires_at) "
        "FROM ablo_idempotency ORDER BY client_tx_id",
        "SELECT id, model, entity_id, type, data, organization_id, client_tx_id, "
        "correlation_id, transaction_id FROM ablo_outbox ORDER BY `cursor`",
    ),
}

# Values each field may take in a generated operation, and values the
# adapter or the database refuses (drawn less often).
_VALUES: dict[str, list[Any]] = {
    "note": [None, "", "plain", "ünïcödé ✓", "x" * 300],
    "quantity": [0, -3, 2**31 - 1],
    "small": [None, 1, -(2**15)],
    "price": [None, "12.34", 0, 99999999.99, "1e3"],
    "ratio": [None, 0.5, -1e-9, 1e300, 3],
    "meta": [None, {"a": [1, 2, {"b": None}]}, [], "text", 1.5, {"deep": {"x": "y"}}],
    "extra": [None, {"k": "v"}, [1, "two"]],
    "dueAt": [None, "2024-02-29T12:00:00Z", "2024-02-29T12:00:00.123456+02:00"],
    "localAt": [None, "2023-01-01T00:00:00", "2023-06-01T10:20:30Z"],
    "day": [None, "2024-01-31"],
    "done": [True, False],
    "code": [None],  # or a code of its own, or (a unique key's 409) a shared one
    "title": ["a title", ""],
}
_REFUSED: dict[str, list[Any]] = {
    "quantity": [2**31, "many", None],
    "small": [2**15],
    "price": ["abc", 1234567890123],
    "dueAt": ["not a time"],
    "day": ["2024-02-30"],
    "done": [None, "yes"],
    "title": [None],
}


def _operation(chooser: random.Random, ids: list[str], serial: int) -> dict[str, Any]:
    kind = chooser.choices(
        ["CREATE", "UPDATE", "ARCHIVE", "UNARCHIVE", "DELETE"], weights=[6, 5, 1, 1, 1]
    )[0]
    # Mostly a new id for a CREATE (else its key's 409), a known one otherwise (else a 404).
    known = bool(ids) and chooser.random() < (0.05 if kind == "CREATE" else 0.9)
    id = chooser.choice(ids) if known else f"i{serial}"
    operation: dict[str, Any] = {"type": kind, "model": "item", "id": id}
    if kind in ("CREATE", "UPDATE"):
        fields = chooser.sample(sorted(_VALUES), chooser.randint(0, 5))
        data = {
            name: chooser.choice(
                _REFUSED[name] if name in _REFUSED and chooser.random() < 0.04 else _VALUES[name]
            )
            for name in fields
        }
        if "code" in data and chooser.random() < 0.6:
            data["code"] = "shared" if chooser.random() < 0.1 else f"code {serial}"
        if kind == "CREATE":
            data.setdefault("title", f"item {serial}")
            if chooser.random() < 0.1:
                data["unknownField"] = 1
        operation["input"] = data
    return operation


def _commits(seed: int, count: int) -> list[dict[str, Any]]:
    chooser = random.Random(seed)
    ids: list[str] = []
    bodies: list[dict[str, Any]] = []
    for serial in range(count):
        if bodies and chooser.random() < 0.08:  # the same commit again: a replay
            bodies.append(chooser.choice(bodies))
            continue
        operations = [
            _operation(chooser, ids, serial * 10 + n) for n in range(chooser.randint(1, 3))
        ]
        ids.extend(op["id"] for op in operations if op["id"] not in ids)
        correlation = f"c{serial}"
        if bodies and chooser.random() < 0.06:  # another intent under a used id: a conflict
            correlation = chooser.choice(bodies)["correlationId"]
        bodies.append({"type": "commit", "correlationId": correlation, "operations": operations})
    return bodies


_NOW_SET = "<set by the database at commit time>"


def _normalized(value: Any) -> Any:
    """An archive's time is the clock's: only whether it is set can match."""
    if isinstance(value, dict):
        return {
            key: (_NOW_SET if key == "archivedAt" and item is not None else _normalized(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_normalized(item) for item in value]
    return value


def _contents(dialect: str, url: str) -> dict[str, list[Any]]:
    items, ledger, outbox = execute(url, *CONTENTS[dialect])
    assert items is not None and ledger is not None and outbox is not None
    # A ledger answer and an event's data hold an archive's time too.
    return {
        "items": [tuple(row) for row in items],
        "ledger": [(*row[:2], _normalized(_json(row[2])), row[3]) for row in ledger],
        "outbox": [(*row[:4], _normalized(_json(row[4])), *row[5:]) for row in outbox],
    }


def _count_sqlalchemy_commits(client: Client) -> list[str]:
    """The correlation ids of the commits ``client`` ran through SQLAlchemy."""
    database: Any = client.source._database  # type: ignore[attr-defined]
    original = database.write
    seen: list[str] = []

    async def write(work: Any, *args: Any) -> Any:
        if getattr(work, "__name__", "") == "_commit_in":
            seen.append(args[0].correlation_id)
        return await original(work, *args)

    database.write = write
    return seen


def _json(text: str | None) -> Any:
    import json

    return None if text is None else json.loads(text)


@pytest.mark.parametrize(
    ("dialect", "returning"),
    [("postgresql", True), ("mariadb", True), ("mariadb", False)],
    # MariaDB has RETURNING on INSERT and DELETE, MySQL 8 has neither: its
    # statements (a row read back after an INSERT, read and locked before a
    # DELETE) run on MariaDB just as well.
    ids=["postgresql", "mariadb", "mysql8-statements-on-mariadb"],
)
async def test_both_commit_paths_answer_and_write_the_same(
    request: pytest.FixtureRequest, dialect: str, returning: bool, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as databases:
        urls = [
            prepare(databases.enter_context(fresh_database(request, dialect, tmp_path / n)))
            for n in ("a.db", "b.db")
        ]
        for url in urls:
            execute(url, ITEMS[dialect])
        await _compare_commit_paths(dialect, urls, returning)


async def _compare_commit_paths(dialect: str, urls: list[str], returning: bool = True) -> None:
    direct, through_sqlalchemy = (Client(SQLSource(url, MODELS)) for url in urls)
    through_sqlalchemy.source._database._commits = None  # type: ignore[attr-defined]
    for client in (direct, through_sqlalchemy) if not returning else ():
        assert await client.load("item", "none") is None  # the dialect has learnt the server
        server = client.source._database._dialect  # type: ignore[attr-defined]
        assert server.insert_returning and server.delete_returning
        server.insert_returning = server.delete_returning = False
    through = {
        id(client): _count_sqlalchemy_commits(client) for client in (direct, through_sqlalchemy)
    }
    answered: Counter[str] = Counter()
    try:
        for body in _commits(seed=20261204, count=300):
            answers = [await client(body) for client in (direct, through_sqlalchemy)]
            assert _normalized(answers[0]) == _normalized(answers[1]), body
            status, answer = answers[0]
            answered[f"{status} {answer.get('error', '')}".strip()] += 1
        # The run reached each kind of answer, so each was compared.
        assert answered["200"] > 100, answered
        assert sum(n for kind, n in answered.items() if kind.startswith("400")) > 10, answered
        assert answered["409 idempotency_conflict"] > 3, answered
        # Each client ran the path it is named for.
        assert through[id(direct)] == [], through[id(direct)]
        assert len(through[id(through_sqlalchemy)]) > 100
        first, second = (_contents(dialect, url) for url in urls)
        assert first["items"] == second["items"]
        assert first["ledger"] == second["ledger"]
        assert first["outbox"] == second["outbox"]
        assert len(first["items"]) > 20 and len(first["outbox"]) > 100
        if not returning:
            shapes = direct.source._database._commits.shapes._shapes  # type: ignore[attr-defined]
            steps = {key[0]: found for key, (found, _) in shapes.items() if found is not None}
            assert steps[INSERT].read_after is not None and not steps[INSERT].returns_row
            assert steps[DELETE].read_before is not None and not steps[DELETE].returns_row
    finally:
        for client in (direct, through_sqlalchemy):
            await client.close()
