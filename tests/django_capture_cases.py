"""The Django adapter with capture installed, run in a process of its own per
database by tests/test_django_capture.py (Django is configured once per
process): ``ABLO_DJANGO_DATABASE`` is a SQLite file's path or a PostgreSQL URL.

Every write of a captured model, whatever makes it, reaches ``events``
exactly once, its ``data`` what ``load`` answers; a rollback none."""

from __future__ import annotations

import datetime as dt
import decimal
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from connector.verify.testing import verify_checks
from tests import django_project
from tests.django_processes import django_database
from tests.helpers import SourceClient

TARGET = os.environ["ABLO_DJANGO_DATABASE"]
django_project.configure(
    django_database(TARGET)
    if TARGET.startswith("postgresql://")
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": TARGET}
)
django_project.create_tables()

from django.db import close_old_connections, connection, transaction  # noqa: E402

from connector.adapters.django.capture import drift, migrate_capture  # noqa: E402
from connector.adapters.django.source import DjangoSource  # noqa: E402
from tests.django_todo.models import Note, Project, Task  # noqa: E402


def served_models() -> dict[str, Any]:
    return {**django_project.served_models(), "note": django_project.served("note", Note)}


INSTALLED = migrate_capture(served_models(), "default")


def make_source() -> DjangoSource:
    return DjangoSource(served_models())


# Every guarantee ablo-connector verify checks, over the real wire, with capture.
test_verify = verify_checks(
    make_source, model="task", fields={"title": "text", "priority": "integer"}
)


@pytest.fixture
async def client() -> AsyncIterator[SourceClient]:
    c = SourceClient(make_source())
    yield c
    await c.close()


def new_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def orm(work: Callable[[], Any]) -> Any:
    """ORM work in a thread of its own, as an application runs it."""
    import asyncio

    def run() -> Any:
        try:
            return work()
        finally:
            close_old_connections()

    return await asyncio.to_thread(run)


def test_capture_is_installed_for_every_served_model() -> None:
    assert [
        f"installed the capture of model {name!r} (table {table})"
        for name, table in (
            ("note", "django_todo_note"),
            ("project", "django_todo_project"),
            ("task", "django_todo_task"),
        )
    ] == INSTALLED
    assert migrate_capture(served_models(), "default") == []  # up to date: nothing to do
    captured, drifted = drift(served_models(), "default")
    assert (captured, drifted) == (["note", "project", "task"], {})


async def test_every_orm_write_is_one_event_with_data_as_load_answers(client: SourceClient) -> None:
    cursor = await client.last_cursor()
    tag = new_id()
    stamp = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)

    def writes() -> None:
        Project.objects.create(id=f"{tag}-p", name="P")
        Task.objects.create(id=f"{tag}-a", title="Saved", project_id=f"{tag}-p")
        Task.objects.filter(pk=f"{tag}-a").update(priority=5, done=True)  # no signal
        Task.objects.bulk_create([Task(id=f"{tag}-b", title="Bulk"), Task(id=f"{tag}-c")])
        Note.objects.create(
            id=f"{tag}-n",
            task_id=f"{tag}-b",
            amount=decimal.Decimal("12.50"),
            extra={"k": [1, "two"]},
            written_at=stamp,
        )
        with connection.cursor() as raw:  # raw SQL through Django's own connection
            raw.execute("UPDATE django_todo_task SET title = %s WHERE id = %s", ["Raw", f"{tag}-c"])
        Task.objects.filter(pk=f"{tag}-b").delete()  # the note's task is SET_NULL
        try:
            with transaction.atomic():
                Task.objects.create(id=f"{tag}-rolled", title="never")
                Task.objects.filter(pk=f"{tag}-a").update(priority=99)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass

    await orm(writes)
    events = [e for e in await client.events_after(cursor) if e["entityId"].startswith(tag)]
    assert [(e["model"], e["type"], e["entityId"]) for e in events] == [
        ("project", "CREATE", f"{tag}-p"),
        ("task", "CREATE", f"{tag}-a"),
        ("task", "UPDATE", f"{tag}-a"),
        ("task", "CREATE", f"{tag}-b"),
        ("task", "CREATE", f"{tag}-c"),
        ("note", "CREATE", f"{tag}-n"),
        ("task", "UPDATE", f"{tag}-c"),
        ("note", "UPDATE", f"{tag}-n"),
        ("task", "DELETE", f"{tag}-b"),
    ]
    assert all("correlationId" not in e for e in events)
    assert "data" not in events[-1]
    # The last event of each row left is the row as load answers it.
    gone = {e["entityId"] for e in events if e["type"] == "DELETE"}
    last = {e["entityId"]: e for e in events if e["entityId"] not in gone}
    for id, event in last.items():
        assert event["data"] == await client.load(event["model"], id), id
    assert events[2]["data"]["priority"] == 5 and events[2]["data"]["done"] is True
    note = last[f"{tag}-n"]["data"]
    assert note["taskId"] is None and note["extra"] == {"k": [1, "two"]}
    assert events[5]["data"]["taskId"] == f"{tag}-b"
    assert await client.load("task", f"{tag}-rolled") is None


async def test_a_session_outside_django_is_recorded_too(client: SourceClient) -> None:
    cursor = await client.last_cursor()
    id = new_id()
    columns = "id, title, done, token, search, updated_at"
    if TARGET.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(TARGET) as session:  # as psql would
            session.execute(
                f"INSERT INTO django_todo_task ({columns}) VALUES (%s, 'psql', true, 'tok', '', "
                "now())",
                [id],
            )
    else:
        import sqlite3

        session = sqlite3.connect(TARGET)  # as the sqlite3 shell would
        with session:
            session.execute(
                f"INSERT INTO django_todo_task ({columns}) VALUES (?, 'shell', 1, 'tok', '', "
                "'2026-01-02 03:04:05.000006')",
                [id],
            )
        session.close()
    (event,) = [e for e in await client.events_after(cursor) if e["entityId"] == id]
    assert event["type"] == "CREATE"
    assert event["data"] == await client.load("task", id)
    assert event["data"]["done"] is True


async def test_a_connector_commit_is_recorded_once_by_itself(client: SourceClient) -> None:
    cursor = await client.last_cursor()
    project, id = new_id(), new_id()
    status, answer = await client(
        {
            "type": "commit",
            "correlationId": f"c-{id}",
            "operations": [
                {"type": "CREATE", "model": "project", "id": project, "input": {"name": "P"}},
                {"type": "CREATE", "model": "task", "id": id, "input": {"projectId": project},
                 "transactionId": "tx-9"},
                {"type": "UPDATE", "model": "task", "id": id, "input": {"title": "Two"}},
            ],
        }
    )  # fmt: skip
    assert status == 200, answer
    status, _ = await client(
        {
            "type": "commit",
            "correlationId": f"d-{id}",
            "operations": [{"type": "DELETE", "model": "project", "id": project}],
        }
    )
    assert status == 200
    events = await client.events_after(cursor)
    assert [(e["id"], e["type"], e.get("correlationId")) for e in events[:3]] == [
        (f"c-{id}:0", "CREATE", f"c-{id}"),
        (f"c-{id}:1", "CREATE", f"c-{id}"),
        (f"c-{id}:2", "UPDATE", f"c-{id}"),
    ]
    assert events[1]["transactionId"] == "tx-9"
    assert events[2]["data"] == answer["rows"][2]
    # The cascade is the database's to record (the trigger), the DELETE the commit's.
    assert sorted((e["model"], e["type"], e["entityId"], e.get("correlationId")) for e in events[3:]) == [
        ("project", "DELETE", project, f"d-{id}"),
        ("task", "DELETE", id, None),
    ]  # fmt: skip


async def test_without_capture_the_signals_record_the_orm_writes_again(
    client: SourceClient,
) -> None:
    assert await orm(lambda: migrate_capture(served_models(), "default", remove=True))
    try:
        cursor = await client.last_cursor()
        id = new_id()

        def writes() -> None:
            Task.objects.create(id=id, title="signal")
            Task.objects.filter(pk=id).update(title="unseen")  # no signal, no trigger

        await orm(writes)
        events = [e for e in await client.events_after(cursor) if e["entityId"] == id]
        assert [(e["type"], e["id"].split(":")[0]) for e in events] == [("CREATE", "django")]
        assert events[0]["data"]["title"] == "signal"
    finally:
        assert await orm(lambda: migrate_capture(served_models(), "default"))


def test_a_capture_that_no_longer_matches_its_model_is_told() -> None:
    models = served_models()
    task = models["task"]
    fields = {wire: f for wire, f in task.fields.items() if wire != "search"}
    models["task"] = type(task)(task.name, task.model, task.id, fields, task.capture)
    captured, drifted = drift(models, "default")
    assert captured == ["note", "project", "task"]
    assert drifted == {
        "task": "the capture of model 'task' (table django_todo_task) no longer matches it "
        "(column 'search' no longer served): run `ablo-connector migrate --django SETTINGS "
        "--capture`"
    }


def test_the_cases_run_on_the_database_asked() -> None:
    assert connection.vendor == ("postgresql" if TARGET.startswith("postgresql://") else "sqlite")


if TARGET.startswith("postgresql://"):
    # SQLite has one writer at a time: a commit holds the write lock from its
    # first statement, so no capture can be installed while it runs.

    async def test_a_capture_installed_while_a_commit_runs_records_its_rows_once(
        client: SourceClient,
    ) -> None:
        from django.db.models.signals import pre_save

        assert await orm(lambda: migrate_capture(served_models(), "default", remove=True))
        installed: list[str] = []

        def install_now(**_: Any) -> None:  # another session, committed before the write
            if not installed:
                installed.extend(migrate_capture(served_models(), "default"))

        pre_save.connect(install_now, sender=Project, dispatch_uid="install_now")
        try:
            cursor = await client.last_cursor()
            id = new_id()
            status, answer = await client(
                {
                    "type": "commit",
                    "correlationId": f"c-{id}",
                    "operations": [
                        {"type": "CREATE", "model": "project", "id": id, "input": {"name": "P"}}
                    ],
                }
            )
            assert status == 200, answer
            assert installed
            events = [e for e in await client.events_after(cursor) if e["entityId"] == id]
            assert [(e["id"], e["type"]) for e in events] == [(f"c-{id}:0", "CREATE")]
        finally:
            pre_save.disconnect(dispatch_uid="install_now", sender=Project)
            await orm(lambda: migrate_capture(served_models(), "default"))


async def test_a_savepoint_rolled_back_in_a_commit_leaves_no_event(client: SourceClient) -> None:
    """A connector commit whose app handler writes a captured row and an
    uncaptured one (the note's capture removed: its signals record it), each
    once kept and once in a savepoint it rolls back."""
    from django.db.models.signals import post_save

    without_note = {name: m for name, m in served_models().items() if name != "note"}
    assert await orm(lambda: migrate_capture(without_note, "default")) == [
        "removed the capture of model 'note' (table django_todo_note)"
    ]
    tag = new_id()

    def handler(instance: Task, **_: Any) -> None:
        if instance.pk != tag:
            return
        Project.objects.create(id=f"{tag}-kept", name="kept")
        Note.objects.create(id=f"{tag}-kept", task_id=tag)
        try:
            with transaction.atomic():
                Project.objects.create(id=f"{tag}-gone", name="gone")
                Note.objects.create(id=f"{tag}-gone", task_id=tag)
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass

    post_save.connect(handler, sender=Task, dispatch_uid="savepoint_handler")
    try:
        cursor = await client.last_cursor()
        status, answer = await client(
            {
                "type": "commit",
                "correlationId": f"c-{tag}",
                "operations": [{"type": "CREATE", "model": "task", "id": tag, "input": {}}],
            }
        )
        assert status == 200, answer
        events = [e for e in await client.events_after(cursor) if e["entityId"].startswith(tag)]
        assert sorted((e["model"], e["type"], e["entityId"]) for e in events) == [
            ("note", "CREATE", f"{tag}-kept"),
            ("project", "CREATE", f"{tag}-kept"),
            ("task", "CREATE", tag),
        ]
        assert await client.load("note", f"{tag}-gone") is None
    finally:
        post_save.disconnect(dispatch_uid="savepoint_handler", sender=Task)
        await orm(lambda: migrate_capture(served_models(), "default"))


async def test_a_row_a_commit_writes_then_a_later_operation_cascades_to_is_recorded(
    client: SourceClient,
) -> None:
    """The commit writes the task's CREATE itself, so the triggers leave the
    task's changes to it; the project's DELETE that follows cascades to the
    task, a change no operation's event records: the commit records it, in
    the order it happened."""
    cursor = await client.last_cursor()
    project, task = new_id(), new_id()
    status, answer = await client(
        {
            "type": "commit",
            "correlationId": f"c-{task}",
            "operations": [
                {"type": "CREATE", "model": "project", "id": project, "input": {"name": "P"}},
                {"type": "CREATE", "model": "task", "id": task, "input": {"projectId": project}},
                {"type": "DELETE", "model": "project", "id": project},
            ],
        }
    )
    assert status == 200, answer
    assert await client.load("task", task) is None
    events = [e for e in await client.events_after(cursor) if e["entityId"] in (project, task)]
    assert [(e["model"], e["type"], e.get("correlationId")) for e in events] == [
        ("project", "CREATE", f"c-{task}"),
        ("task", "CREATE", f"c-{task}"),
        ("task", "DELETE", f"c-{task}"),  # the cascade, before the DELETE that made it
        ("project", "DELETE", f"c-{task}"),
    ]


if TARGET.startswith("postgresql://"):

    @pytest.mark.parametrize("installed", [True, False])
    async def test_a_capture_changed_under_a_repeatable_read_transaction_records_once(
        client: SourceClient, installed: bool
    ) -> None:
        """The transaction's snapshot predates the capture's install (or
        removal), its write does not: one event either way."""
        id = new_id()
        await orm(lambda: Task.objects.create(id=id, title="before"))
        if installed:
            assert await orm(lambda: migrate_capture(served_models(), "default", remove=True))
        try:
            cursor = await client.last_cursor()

            def writes() -> None:
                with transaction.atomic():
                    with connection.cursor() as raw:
                        raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    # The snapshot is taken, on no table (removing a table's
                    # triggers waits for every transaction that read it).
                    with connection.cursor() as raw:
                        raw.execute("SELECT 1")
                    assert migrate_capture(served_models(), "default", remove=not installed)
                    task = Task.objects.get(pk=id)
                    task.title = "after"
                    task.save()

            await orm(writes)
            events = [e for e in await client.events_after(cursor) if e["entityId"] == id]
            assert [(e["type"], e["data"]["title"]) for e in events] == [("UPDATE", "after")]
        finally:
            await orm(lambda: migrate_capture(served_models(), "default"))
