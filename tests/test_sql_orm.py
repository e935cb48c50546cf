"""The SQL adapter serving an application's SQLAlchemy classes (and SQLModel's):
names, fields and Python-side defaults from the classes, the TOML map over
them, and the mistakes refused at start.

The classes are ``examples/orm_models.py``'s; their tables are created as the
application would (``Base.metadata.create_all``), then ``migrate`` adds the
ledger and outbox.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from connector import ConfigError
from connector.adapters.sql import ModelMap, SQLSource, create_database_engine, migrate
from connector.dev.engine import DevEngine
from examples import orm_models
from tests.conftest import REPO
from tests.helpers import Process, execute, process
from tests.test_sql_adapter import Client, database_url  # noqa: F401  (the fixture, on each database)

KEY = "sk_test_sql_orm_4be1"
ENV = {"ABLO_API_KEY": KEY}


def create_tables(url: str, metadata: sa.MetaData = orm_models.Base.metadata) -> str:
    """The application's tables, then the connector's ledger and outbox."""
    engine = create_database_engine(url)
    try:
        metadata.create_all(engine)
        migrate(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def orm_database(database_url: str) -> str:  # noqa: F811
    return create_tables(database_url)


@pytest.fixture
async def orm_client(orm_database: str) -> AsyncIterator[Client]:
    client = Client(SQLSource(orm_database, orm_models.Base))
    yield client
    await client.close()


def stamp(value: str) -> dt.datetime:
    """A served timestamp (with or without an offset) as an aware UTC datetime."""
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def create_task(id: str, title: str, **input: Any) -> dict[str, Any]:
    return {"type": "CREATE", "model": "task", "id": id, "input": {"title": title, **input}}


async def load(client: Client, model: str, id: str) -> dict[str, Any]:
    answer = await client.ok({"type": "load", "model": model, "id": id})
    row: dict[str, Any] = answer["row"]
    return row


# ------------------------------------------------------------ names and fields


def test_names_and_fields_come_from_the_classes(tmp_path: Path) -> None:
    url = create_tables(f"sqlite:///{tmp_path / 'app.db'}")
    source = SQLSource(url, orm_models.Base)
    try:
        models = source.prepare()
    finally:
        source.close()
    # `member` from __ablo_model__; `task` and `project` from the class names.
    assert sorted(models) == ["member", "project", "task"]
    task = models["task"]
    # Mapped column attributes in camelCase, `due` over the column `due_at`;
    # no `secret` (__ablo_exclude__), relationship, hybrid or column_property.
    assert sorted(task.columns) == sorted(
        ["id", "title", "slug", "done", "due", "createdAt", "updatedAt", "projectId"]
    )
    assert task.columns["due"].name == "due_at"
    # The primary key's attribute `handle` (column user_handle) is the id.
    assert dict(models["member"].fields) == {"user_handle": "id", "display_name": "displayName"}
    names = source.served_models()
    assert not isinstance(names, dict) and names.resolve("Member") == "member"  # type: ignore[union-attr]
    assert names.resolve("Task") == "task"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("class_name", "model"),
    [("Task", "task"), ("WorkItem", "workItem"), ("HTTPLog", "httpLog"), ("URL", "url")],
)
def test_a_class_name_becomes_a_lower_camel_model_name(class_name: str, model: str) -> None:
    from connector.adapters.sql.declared import class_model_name

    assert class_model_name(class_name) == model


def test_a_module_serves_the_classes_defined_in_it() -> None:
    assert sorted(ModelMap.from_classes(orm_models)) == ["member", "project", "task"]
    assert sorted(ModelMap.from_classes(orm_models.Person)) == ["member"]


# ------------------------------------------------------------ writes


async def test_python_side_defaults_apply_on_create_and_onupdate_on_update(
    orm_client: Client, orm_database: str
) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    status, body = await orm_client.commit("c1", create_task("t1", "Write The Docs"))
    assert status == 200, body
    (created,) = body["rows"]
    # The context-sensitive default saw the title; the callables ran; the
    # scalar default and the renamed column came back as saved.
    assert created["slug"] == "write-the-docs" and created["done"] is False
    assert created["due"] is None and "secret" not in created
    assert stamp(created["createdAt"]) >= before
    assert stamp(created["updatedAt"]) >= before
    assert await load(orm_client, "task", "t1") == created
    (stored,) = execute(orm_database, "SELECT slug, created_at FROM tasks WHERE id = 't1'")[0]
    assert stored[0] == "write-the-docs" and stored[1] is not None
    # Back-date the row, so that the onupdate's new stamp shows on any
    # database's precision (MariaDB's DATETIME keeps whole seconds).
    execute(orm_database, "UPDATE tasks SET updated_at = '2001-02-03 04:05:06' WHERE id = 't1'")

    status, body = await orm_client.commit(
        "c2",
        {"type": "UPDATE", "model": "task", "id": "t1", "input": {"due": "2030-05-06T07:08:09Z"}},
    )
    assert status == 200, body
    (updated,) = body["rows"]
    # onupdate renewed updatedAt; the insert-only defaults kept their values.
    assert stamp(updated["updatedAt"]) >= before
    assert updated["createdAt"] == created["createdAt"] and updated["slug"] == "write-the-docs"
    assert stamp(updated["due"]) == dt.datetime(2030, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    assert await load(orm_client, "task", "t1") == updated
    events = (await orm_client.events())["events"]
    assert [event["data"]["updatedAt"] for event in events] == [
        created["updatedAt"],
        updated["updatedAt"],
    ]
    assert stamp(created["updatedAt"]).year > 2001


async def test_a_value_given_wins_over_the_default(orm_client: Client) -> None:
    status, body = await orm_client.commit("c1", create_task("t1", "A", slug="mine", done=True))
    assert status == 200, body
    assert body["rows"][0]["slug"] == "mine" and body["rows"][0]["done"] is True
    status, body = await orm_client.commit(
        "c2", {"type": "CREATE", "model": "member", "id": "ada", "input": {"displayName": "Ada"}}
    )
    assert status == 200, body
    assert body["rows"] == [{"id": "ada", "displayName": "Ada"}]


async def test_an_excluded_attribute_is_neither_read_nor_written(orm_client: Client) -> None:
    status, body = await orm_client.commit("c1", create_task("t1", "A", secret="s"))
    assert (status, body["error"]) == (400, "source_unknown_field")


# ------------------------------------------------------------ the TOML map over the classes


async def test_a_toml_map_overrides_the_classes(tmp_path: Path) -> None:
    url = create_tables(f"sqlite:///{tmp_path / 'app.db'}")
    toml = tmp_path / "models.toml"
    toml.write_text(
        'classes = "examples.orm_models:Base"\n'
        '[models.task]\ntypename = "Todo"\nexclude = ["slug"]\n'
        '[models.task.fields]\nname = "title"\n'
    )
    client = Client(SQLSource(url, ModelMap.from_toml(toml)))
    try:
        status, body = await client.commit(
            "c1", {"type": "CREATE", "model": "Todo", "id": "t1", "input": {"name": "Hello World"}}
        )
        assert status == 200, body
        (row,) = body["rows"]
        assert row["name"] == "Hello World" and "title" not in row and "slug" not in row
        assert stamp(row["createdAt"]) <= dt.datetime.now(dt.UTC)  # the class's default still runs
        # The excluded column is not served, yet its default was written.
        assert execute(url, "SELECT slug FROM tasks")[0] == [("hello-world",)]
        assert sorted(client.source.models) == ["member", "project", "task"]
    finally:
        await client.close()


# ------------------------------------------------------------ refused at start


class _CompositeBase(DeclarativeBase):
    pass


class Membership(_CompositeBase):
    __tablename__ = "memberships"

    user_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(64), unique=True)


def test_a_composite_primary_key_is_refused_with_how_to_map_one_id() -> None:
    with pytest.raises(ConfigError) as refused:
        ModelMap.from_classes(_CompositeBase)
    message = str(refused.value)
    assert "\n" not in message
    assert "primary key has 2 columns (user_id, org_id)" in message
    assert '__ablo_id__ = "code"' in message


async def test_a_composite_key_class_with_an_id_attribute_is_served(tmp_path: Path) -> None:
    url = create_tables(f"sqlite:///{tmp_path / 'app.db'}", _CompositeBase.metadata)
    Membership.__ablo_id__ = "code"
    try:
        client = Client(SQLSource(url, _CompositeBase))
    finally:
        del Membership.__ablo_id__  # type: ignore[attr-defined]
    try:
        status, body = await client.commit(
            "c1",
            {
                "type": "CREATE",
                "model": "membership",
                "id": "m1",
                "input": {"userId": "u", "orgId": "o"},
            },
        )
        assert status == 200, body
        assert body["rows"] == [{"id": "m1", "userId": "u", "orgId": "o"}]
    finally:
        await client.close()


def test_mistakes_in_the_class_attributes_are_one_line_each() -> None:
    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "notes"
        __ablo_exclude__ = ("missing",)
        id: Mapped[str] = mapped_column(primary_key=True)

    with pytest.raises(ConfigError, match="__ablo_exclude__ names 'missing', no mapped attribute"):
        ModelMap.from_classes(Base)
    Note.__ablo_exclude__ = ()  # type: ignore[assignment]
    Note.__ablo_include__ = ("registry",)
    with pytest.raises(ConfigError, match="__ablo_include__: 'registry' is no mapped attribute"):
        ModelMap.from_classes(Base)


def test_an_included_relationship_or_hybrid_is_refused_not_ignored() -> None:
    orm_models.Task.__ablo_include__ = ("project", "late")
    try:
        with pytest.raises(ConfigError, match="'late' is a hybrid_property"):
            ModelMap.from_classes(orm_models.Base)
        orm_models.Task.__ablo_include__ = ("project",)
        with pytest.raises(ConfigError, match="'project' is a relationship"):
            ModelMap.from_classes(orm_models.Base)
    finally:
        del orm_models.Task.__ablo_include__  # type: ignore[attr-defined]


# ------------------------------------------------------------ from the command line


async def test_run_serves_the_classes_end_to_end(database_url: str) -> None:  # noqa: F811
    url = database_url
    # The tables, as the README creates them.
    created = subprocess.run(
        [sys.executable, "-m", "examples.orm_models", url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    models = ["--models", "examples.orm_models:Base"]
    async with process(["migrate", "--database-url", url, *models]) as migrating:
        assert await migrating.wait(30) == 0, migrating.output()
        assert "task" in migrating.output()
    async with DevEngine(KEY) as engine:
        args = ["run", "--base-url", engine.base_url, "--database-url", url, *models]
        connector = await Process(args, ENV).start()
        try:
            await engine.wait_attached(20)
            commit = {
                "type": "commit",
                "correlationId": "cli_1",
                "operations": [create_task("t1", "From The CLI")],
            }
            answer = await engine.request(commit)
            assert answer.status == 200, answer.body
            (row,) = answer.json()["rows"]
            assert row["slug"] == "from-the-cli" and row["createdAt"] is not None
            loaded = await engine.request({"type": "load", "model": "Task", "id": "t1"})
            assert loaded.json()["row"] == row
        finally:
            connector.signal(signal.SIGTERM)
            assert await connector.wait(20) == 0, connector.output()
            await connector.stop()


def _module(tmp_path: Path, name: str, source: str) -> dict[str, str]:
    (tmp_path / f"{name}.py").write_text(source)
    return {**ENV, "PYTHONPATH": str(tmp_path)}


_COMPOSITE = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

class Base(DeclarativeBase):
    pass

class Membership(Base):
    __tablename__ = "memberships"
    user_id: Mapped[str] = mapped_column(primary_key=True)
    org_id: Mapped[str] = mapped_column(primary_key=True)
"""


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "composite_models",
            _COMPOSITE,
            "class composite_models.Membership: its primary key has 2 columns (user_id, org_id)",
        ),
        ("broken_models", "class Base(:\n", "models module 'broken_models' has a syntax error at "),
        ("absent_models", None, "cannot import models module 'absent_models': no module named"),
    ],
)
async def test_run_refuses_classes_it_cannot_serve_in_one_line(
    tmp_path: Path, module: str, source: str | None, expected: str
) -> None:
    url = create_tables(f"sqlite:///{tmp_path / 'app.db'}")
    env = _module(tmp_path, module, source) if source is not None else ENV
    args = ["run", "--database-url", url, "--models", f"{module}:Base"]
    async with process(args, env) as connector:
        assert await connector.wait(30) == 78, connector.output()
        output = connector.output()
    assert expected in output and "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if expected in line]
    if module == "composite_models":
        assert '__ablo_id__ = "ATTRIBUTE"' in line
    if module == "broken_models":
        assert f"{tmp_path / 'broken_models.py'}, line 1" in line


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("composite_models", _COMPOSITE),
        ("broken_models", "class Base(:\n"),
        ("absent_models", None),
    ],
)
async def test_migrate_refuses_classes_before_it_changes_the_database(
    tmp_path: Path, module: str, source: str | None
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    execute(url, "CREATE TABLE memberships (user_id TEXT, org_id TEXT)")
    env = _module(tmp_path, module, source) if source is not None else ENV
    for extra in ([], ["--capture"]):
        args = ["migrate", "--database-url", url, "--models", f"{module}:Base", *extra]
        async with process(args, env) as migrating:
            assert await migrating.wait(30) == 78, migrating.output()
            assert "created" not in migrating.output()
        engine = create_database_engine(url)
        try:
            assert sa.inspect(engine).get_table_names() == ["memberships"]
        finally:
            engine.dispose()


async def test_verify_passes_on_the_classes(tmp_path: Path) -> None:
    url = create_tables(f"sqlite:///{tmp_path / 'verify_orm.db'}")
    args = ["verify", "--json", "--database-url", url, "--models", "examples.orm_models:Base"]
    async with process([*args, "--model", "task"]) as verifying:
        status = await verifying.wait(90)
        output, printed = verifying.output(), verifying.stdout_path.read_text()
    assert status == 0, output
    report = json.loads(printed)
    assert report["failed"] == 0 and report["passed"] > 0 and report["model"] == "task"


# ------------------------------------------------------------ SQLModel


async def test_sqlmodel_classes_are_served_with_their_defaults(tmp_path: Path) -> None:
    from sqlmodel import Field, SQLModel

    class Ticket(SQLModel, table=True):
        __tablename__ = f"tickets_{uuid.uuid4().hex[:8]}"
        id: str = Field(primary_key=True)
        subject: str
        opened_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
        state: str = Field(default="open")

    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_database_engine(url)
    Ticket.metadata.create_all(engine, tables=[Ticket.__table__])  # type: ignore[attr-defined]
    migrate(engine)
    engine.dispose()
    client = Client(SQLSource(url, Ticket))
    try:
        status, body = await client.commit(
            "c1",
            {"type": "CREATE", "model": "ticket", "id": "k1", "input": {"subject": "Broken"}},
        )
        assert status == 200, body
        (row,) = body["rows"]
        assert row["state"] == "open" and row["openedAt"] is not None
        assert sorted(row) == ["id", "openedAt", "state", "subject"]
    finally:
        await client.close()
