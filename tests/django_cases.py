"""The Django adapter's cases, run in a process of their own per database by
tests/test_django_source.py (Django is configured once per process):
``ABLO_DJANGO_DATABASE`` is a SQLite file's path or a PostgreSQL URL."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connector import RequestContext
from connector.verify.testing import verify_checks
from connector.wire.bodies import CommitRequest
from tests import django_project
from tests.django_processes import django_database
from tests.helpers import SourceClient


def _database() -> dict[str, Any]:
    target = os.environ["ABLO_DJANGO_DATABASE"]
    if not target.startswith(("postgresql://", "mysql://")):
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": target}
    return django_database(target)  # MySQL: Django's own driver, mysqlclient (the dev extra)


django_project.configure(_database())
django_project.create_tables()

from django.db import close_old_connections, transaction  # noqa: E402

from connector.adapters.django.source import DjangoSource  # noqa: E402
from tests.django_todo.models import SAVED, Task  # noqa: E402


def make_source() -> DjangoSource:
    return DjangoSource(django_project.served_models())


# Every guarantee ablo-connector verify checks, over the real wire.
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


def orm(work: Any) -> Any:
    """Run ORM work in a thread of its own, as an application would (never on the loop)."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(work())
        finally:
            close_old_connections()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0] if result else None


async def test_a_commit_runs_what_the_orm_runs_and_answers_the_row_as_saved(
    client: SourceClient,
) -> None:
    cursor = await client.last_cursor()
    id = new_id()
    status, answer = await client.commit(
        f"c-{id}",
        {"type": "CREATE", "model": "task", "id": id, "input": {"title": "Write Tests"}},
    )
    assert status == 200, answer
    (row,) = answer["rows"]
    assert row["search"] == "write tests"  # the save() override
    assert len(row["token"]) == 8  # the default callable
    assert row["updatedAt"] is not None  # auto_now
    assert id in SAVED  # the app's own post_save receiver
    assert row == await client.load("task", id)
    status, answer = await client.commit(
        f"u-{id}",
        {"type": "UPDATE", "model": "task", "id": id, "input": {"title": "Done", "done": True},
         "transactionId": "tx-1"},
    )  # fmt: skip
    assert status == 200, answer
    updated = answer["rows"][0]
    assert updated["search"] == "done" and updated["updatedAt"] >= row["updatedAt"]
    events = await client.events_after(cursor)
    # Exactly one event per operation, with its identity, data as load answers.
    assert [(e["id"], e["type"], e.get("correlationId")) for e in events] == [
        (f"c-{id}:0", "CREATE", f"c-{id}"),
        (f"u-{id}:0", "UPDATE", f"u-{id}"),
    ]
    assert events[1]["transactionId"] == "tx-1"
    assert events[1]["data"] == await client.load("task", id)
    assert events[0]["data"] == row


async def test_validation_is_a_400_naming_the_field_and_constraints_are_409(
    client: SourceClient,
) -> None:
    id, other = new_id(), new_id()
    status, answer = await client.commit(
        f"v-{id}", {"type": "CREATE", "model": "task", "id": id, "input": {"title": "forbidden"}}
    )
    assert (status, answer["error"], answer["field"]) == (400, "source_value_invalid", "title")
    assert "forbidden" in answer["message"]
    status, answer = await client.commit(
        f"p-{id}",
        {"type": "CREATE", "model": "task", "id": id, "input": {"projectId": "no-such-project"}},
    )
    assert (status, answer["error"], answer["field"]) == (
        409, "source_constraint_violation", "projectId"
    )  # fmt: skip
    ok, _ = await client.commit(
        f"s-{id}", {"type": "CREATE", "model": "task", "id": id, "input": {"slug": id}}
    )
    assert ok == 200
    status, answer = await client.commit(
        f"s-{other}", {"type": "CREATE", "model": "task", "id": other, "input": {"slug": id}}
    )
    assert (status, answer["error"], answer["field"]) == (
        409,
        "source_constraint_violation",
        "slug",
    )
    assert await client.load("task", other) is None


async def test_a_foreign_key_to_a_real_row_is_written(client: SourceClient) -> None:
    project, id = new_id(), new_id()
    status, answer = await client.commit(
        f"fk-{id}",
        {"type": "CREATE", "model": "project", "id": project, "input": {"name": "P"}},
        {"type": "CREATE", "model": "task", "id": id, "input": {"projectId": project}},
    )
    assert status == 200, answer
    assert answer["rows"][1]["projectId"] == project


async def test_the_apps_own_writes_are_events_and_a_rollback_is_none(client: SourceClient) -> None:
    cursor = await client.last_cursor()
    id = new_id()

    def writes() -> None:
        task = Task.objects.create(id=id, title="From The App")
        task.priority = 3
        task.save()
        try:
            with transaction.atomic():
                Task.objects.create(id=id + "-rolled", title="never")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        task.delete()

    orm(writes)
    events = await client.events_after(cursor)
    assert [(e["type"], e["entityId"]) for e in events] == [
        ("CREATE", id), ("UPDATE", id), ("DELETE", id)
    ]  # fmt: skip
    assert events[0]["data"]["search"] == "from the app"
    assert events[1]["data"]["priority"] == 3
    assert "data" not in events[2] and "correlationId" not in events[0]
    assert await client.load("task", id) is None


def _commit_order_locks_held() -> int:
    """How many commit-order locks this thread's database session holds."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute(
                "SELECT COUNT(*) FROM (SELECT IS_USED_LOCK(LEFT(CONCAT('ablo_outbox.', "
                "DATABASE()), 64)) AS holder) AS used WHERE holder = CONNECTION_ID()"
            )
        elif connection.vendor == "postgresql":
            cursor.execute(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid()"
            )
        else:  # SQLite's write lock is its transaction's
            return int(connection.in_atomic_block)
        (count,) = cursor.fetchone()
    return int(count)


async def test_the_commit_order_lock_is_freed_by_the_first_commit_after_a_rollback(
    client: SourceClient,
) -> None:
    id = new_id()

    def writes() -> list[int]:
        held = []
        try:
            with transaction.atomic():
                Task.objects.create(id=id + "-rolled", title="never")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        with transaction.atomic():
            Task.objects.create(id=id, title="kept")
        held.append(_commit_order_locks_held())
        Task.objects.filter(pk=id).first().save()  # autocommit: its own transaction
        held.append(_commit_order_locks_held())
        return held

    assert orm(writes) == [0, 0]
    # And the connector, on sessions of its own, is not kept waiting.
    status, _ = await client.commit(
        f"after-{id}", {"type": "UPDATE", "model": "task", "id": id, "input": {"title": "next"}}
    )
    assert status == 200


async def test_a_cascade_of_a_connector_delete_is_recorded_in_its_transaction(
    client: SourceClient,
) -> None:
    project, id = new_id(), new_id()
    await client.commit(
        f"a-{id}",
        {"type": "CREATE", "model": "project", "id": project, "input": {"name": "P"}},
        {"type": "CREATE", "model": "task", "id": id, "input": {"projectId": project}},
    )
    cursor = await client.last_cursor()
    status, _ = await client.commit(
        f"d-{id}", {"type": "DELETE", "model": "project", "id": project}
    )
    assert status == 200
    events = await client.events_after(cursor)
    assert sorted((e["model"], e["type"], e["entityId"]) for e in events) == [
        ("project", "DELETE", project), ("task", "DELETE", id)
    ]  # fmt: skip
    assert [e["id"] for e in events if e["model"] == "project"] == [f"d-{id}:0"]


async def test_a_row_updated_then_cascaded_away_in_one_commit_ends_deleted_in_the_feed(
    client: SourceClient,
) -> None:
    project, id = new_id(), new_id()
    await client.commit(
        f"a-{id}",
        {"type": "CREATE", "model": "project", "id": project, "input": {"name": "P"}},
        {"type": "CREATE", "model": "task", "id": id, "input": {"projectId": project}},
    )
    cursor = await client.last_cursor()
    status, _ = await client.commit(
        f"u-{id}",
        {"type": "UPDATE", "model": "task", "id": id, "input": {"title": "last words"}},
        {"type": "DELETE", "model": "project", "id": project},
    )
    assert status == 200
    assert await client.load("task", id) is None
    # In the order it happened, all under the commit's correlationId: the
    # engine that replays the feed ends with the task gone.
    assert [
        (e["model"], e["type"], e["entityId"], e.get("correlationId"))
        for e in await client.events_after(cursor)
    ] == [
        ("task", "UPDATE", id, f"u-{id}"),
        ("task", "DELETE", id, f"u-{id}"),
        ("project", "DELETE", project, f"u-{id}"),
    ]


async def test_a_validation_error_from_a_pre_save_handler_is_a_400(client: SourceClient) -> None:
    from django.core.exceptions import ValidationError
    from django.db.models.signals import pre_save

    def refuse(sender: Any, instance: Task, **_: Any) -> None:
        if instance.title == "refused by a signal":
            raise ValidationError({"title": "the signal says no"})

    pre_save.connect(refuse, sender=Task, weak=False, dispatch_uid="test_refuse")
    try:
        id = new_id()
        status, answer = await client.commit(
            f"ps-{id}",
            {
                "type": "CREATE",
                "model": "task",
                "id": id,
                "input": {"title": "refused by a signal"},
            },
        )
    finally:
        pre_save.disconnect(dispatch_uid="test_refuse", sender=Task)
    assert (status, answer["error"], answer["field"]) == (400, "source_value_invalid", "title")
    assert "the signal says no" in answer["message"]
    assert await client.load("task", id) is None


async def test_a_refused_events_cursor_lets_retention_prune_nothing_unread(
    client: SourceClient,
) -> None:
    id = new_id()
    await client.commit(f"c-{id}", {"type": "CREATE", "model": "task", "id": id})
    status, answer = await client({"type": "events", "cursor": "999999999999"})
    assert (status, answer["error"]) == (400, "source_cursor_invalid")
    client.source.outbox_retention = 0
    await client.source.prune()
    assert f"c-{id}:0" in {e["id"] for e in await client.events_after(await _before_last(client))}


async def _before_last(client: SourceClient) -> str | None:
    """A cursor just before the feed's last event (None: from the start)."""
    events = await client.events_after(None)
    return events[-2]["cursor"] if len(events) > 1 else None


async def test_concurrent_identical_commits_apply_once(client: SourceClient) -> None:
    cursor = await client.last_cursor()
    id = new_id()
    body = {"type": "CREATE", "model": "task", "id": id, "input": {"title": "once"}}
    answers = await asyncio.gather(*(client.commit(f"k-{id}", body) for _ in range(6)))
    assert {status for status, _ in answers} == {200}
    assert len({json.dumps(answer, sort_keys=True) for _, answer in answers}) == 1
    assert [e["id"] for e in await client.events_after(cursor)] == [f"k-{id}:0"]
    status, answer = await client.commit(
        f"k-{id}", {"type": "CREATE", "model": "task", "id": id, "input": {"title": "other"}}
    )
    assert (status, answer["error"]) == (409, "idempotency_conflict")


async def test_like_matches_the_whole_text_as_the_sql_adapter_does(client: SourceClient) -> None:
    tag = new_id()
    titles = {"exact": f"{tag} end", "newline": f"{tag} end\n", "longer": f"{tag} end!"}
    ops = [
        {"type": "CREATE", "model": "task", "id": f"{tag}-{name}", "input": {"title": title}}
        for name, title in titles.items()
    ]
    assert (await client.commit(f"like-{tag}", *ops))[0] == 200

    async def found(op: str, pattern: str) -> set[str]:
        query = {"where": [["title", op, pattern]], "limit": 100}
        page = await client.ok({"type": "list", "model": "task", "query": query})
        return {row["id"].removeprefix(f"{tag}-") for row in page["rows"]}

    assert await found("LIKE", f"{tag} end") == {"exact"}
    assert await found("ILIKE", f"{tag} END") == {"exact"}
    assert await found("LIKE", f"{tag} end_") == {"newline", "longer"}
    assert await found("LIKE", f"{tag} end%") == set(titles)


async def test_list_uses_the_shared_rules(client: SourceClient) -> None:
    tag = new_id()
    ops = [
        {"type": "CREATE", "model": "task", "id": f"{tag}-{i}",
         "input": {"title": f"{tag} {'Alpha' if i % 2 else 'beta'}",
                   "priority": None if i == 4 else i}}
        for i in range(6)
    ]  # fmt: skip
    assert (await client.commit(f"l-{tag}", *ops))[0] == 200

    async def ids(**query: Any) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            q = {**query, "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = await client.ok({"type": "list", "model": "task", "query": q})
            seen += [row["id"] for row in page["rows"]]
            cursor = page.get("nextCursor")
            if cursor is None:
                return seen

    mine = ["title", "LIKE", f"{tag}%"]
    assert await ids(where=[mine], orderBy="priority") == [f"{tag}-{i}" for i in (0, 1, 2, 3, 5, 4)]
    assert await ids(where=[mine], orderBy="priority", order="desc") == [
        f"{tag}-{i}" for i in (5, 3, 2, 1, 0, 4)
    ]
    assert await ids(where=[mine, ["priority", "!=", 1]]) == [f"{tag}-{i}" for i in (0, 2, 3, 4, 5)]
    assert await ids(where=[mine, ["priority", "NOT IN", [0, 2]]]) == [
        f"{tag}-{i}" for i in (1, 3, 4, 5)
    ]
    assert await ids(where=[["title", "ILIKE", f"{tag} ALPHA"]]) == [
        f"{tag}-{i}" for i in (1, 3, 5)
    ]
    assert await ids(where=[mine, ["priority", "IS", None]]) == [f"{tag}-4"]
    status, answer = await client(
        {"type": "list", "model": "task", "query": {"where": [["priority", "<", None]]}}
    )
    assert (status, answer["error"]) == (400, "source_where_invalid")


def test_the_cases_run_on_the_database_asked() -> None:
    from django.db import connection

    asked = os.environ["ABLO_DJANGO_DATABASE"]
    assert connection.vendor == (
        asked.split("://")[0] if asked.startswith(("postgresql://", "mysql://")) else "sqlite"
    )
    if connection.vendor == "mysql":
        # Django's own driver, mysqlclient, not PyMySQL standing in for it.
        assert connection.Database.__name__ == "MySQLdb", connection.Database


async def test_retention_prunes_only_events_the_engine_paged_past(client: SourceClient) -> None:
    first, second = new_id(), new_id()
    start = await client.last_cursor()  # the engine has read everything before them
    await client.commit(f"r-{first}", {"type": "CREATE", "model": "task", "id": first})
    await client.commit(f"r-{second}", {"type": "CREATE", "model": "task", "id": second})
    after_start = {"cursor": start} if start is not None else {}
    events = (await client.ok({"type": "events", **after_start}))["events"]
    mine = {e["id"]: e["cursor"] for e in events if e["id"] in (f"r-{first}:0", f"r-{second}:0")}
    # The engine reads past the first (one page after it), not the second.
    await client.ok({"type": "events", "cursor": mine[f"r-{first}:0"], "limit": 1})
    client.source.outbox_retention = 0
    deleted, _ = await client.source.prune()
    assert deleted >= 1
    left = {e["id"] for e in await client.events_after(None)}
    assert f"r-{first}:0" not in left and f"r-{second}:0" in left


async def test_a_reader_paging_while_app_and_connector_write_misses_no_event(
    client: SourceClient,
) -> None:
    start = await client.last_cursor()
    tag = new_id()

    def app_writes(worker: int) -> None:
        try:
            for i in range(15):
                Task.objects.create(id=f"{tag}-a{worker}-{i}", title="app")
        finally:
            close_old_connections()

    async def connector_writes(worker: int) -> None:
        for i in range(15):
            id = f"{tag}-c{worker}-{i}"
            status, _ = await client.commit(
                f"m-{id}", {"type": "CREATE", "model": "task", "id": id}
            )
            assert status == 200

    seen: list[str] = []
    done = asyncio.Event()

    async def reader() -> None:
        cursor = start
        while True:
            finished = done.is_set()
            body: dict[str, Any] = {"type": "events", "limit": 7}
            if cursor is not None:
                body["cursor"] = cursor
            page = await client.ok(body)
            seen.extend(e["entityId"] for e in page["events"] if e["entityId"].startswith(tag))
            cursor = page.get("nextCursor", cursor)
            if finished and not page["events"]:
                return

    reading = asyncio.create_task(reader())
    await asyncio.gather(
        *(asyncio.to_thread(app_writes, w) for w in range(3)),
        *(connector_writes(w) for w in range(3)),
    )
    done.set()
    await reading
    # Every write once, none skipped by the reader that paged meanwhile.
    assert len(seen) == len(set(seen)) == 90


async def test_a_value_past_its_columns_range_is_the_callers_400(client: SourceClient) -> None:
    status, answer = await client(
        {"type": "list", "model": "task", "query": {"where": [["priority", ">", 2**62]]}}
    )
    assert status in (200, 400), answer  # SQLite compares any integer
    if status == 400:
        assert answer["error"] == "source_value_invalid"
    status, answer = await client.commit(
        f"big-{new_id()}",
        {"type": "CREATE", "model": "task", "id": new_id(), "input": {"priority": 2**70}},
    )
    assert (status, answer["error"], answer["field"]) == (400, "source_value_invalid", "priority")


async def test_orm_work_runs_in_the_sources_threads_and_a_cancelled_request_never_runs() -> None:
    source = DjangoSource(django_project.served_models(), workers=1)
    blocker = threading.Event()
    try:
        busy = asyncio.ensure_future(source._run(blocker.wait))
        id = new_id()
        commit = CommitRequest.model_validate(
            {
                "correlationId": f"x-{id}",
                "operations": [{"type": "CREATE", "model": "task", "id": id}],
            }
        )
        context = RequestContext("commit", "msg", 0, {}, commit)
        queued = asyncio.ensure_future(source.commit(commit, context))
        await asyncio.sleep(0)  # let it reach the queue behind the blocked worker
        assert not queued.done()  # the event loop runs while the ORM worker is blocked
        queued.cancel()  # as the connector's deadline does
        with pytest.raises(asyncio.CancelledError):
            await queued  # its work left the executor's queue before the task ended
        blocker.set()
        await busy
        await source._run(lambda: None)  # one worker, first in first out: the queue is drained
        assert await source.load("task", id, context) is None
    finally:
        blocker.set()
        await source.aclose()
