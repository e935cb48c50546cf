"""The handler example over an application's own table
(examples/captured_notes_source.py), through the real dispatcher: the
application's writes from a plain database session and the handler's own
commits reach ``events`` once each, in commit order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from connector.verify.plan import FieldSpec
from examples.captured_notes_source import NotesSource
from tests.test_sql_adapter import Client
from tests.test_sql_capture import Session, all_events, database_url  # noqa: F401
from tests.test_verify import statuses, verify

# The helpers for a handler's own tables are SQLite's and PostgreSQL's (on
# MySQL and MariaDB the SQL adapter serves the table and moves what its
# triggers staged: test_sql_capture.py).
pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:  # noqa: F811
    c = Client(NotesSource(database_url))  # type: ignore[arg-type]
    yield c
    c.dispatcher.close()
    c.source.engine.dispose()


def note(type: str, id: str, **input: Any) -> dict[str, Any]:
    return {"type": type, "model": "note", "id": id, "input": input}


async def load(client: Client, id: str) -> Any:
    return (await client.ok({"type": "load", "model": "note", "id": id}))["row"]


async def test_the_applications_writes_and_the_handlers_commits_are_events_once(
    client: Client,
    database_url: str,  # noqa: F811
) -> None:
    status, body = await client.commit("c1", note("CREATE", "n1", body="from the engine"))
    assert status == 200, body
    session = Session(database_url)
    try:
        session.write("INSERT INTO notes (id, body) VALUES ('n2', 'from the application')")
        created = await load(client, "n2")
        session.write("UPDATE notes SET pinned = true WHERE id = 'n1'")
        pinned = await load(client, "n1")
        session.write("UPDATE notes SET body = body WHERE id = 'n1'")  # no change: no event
        session.begin()
        session.run("DELETE FROM notes")
        session.rollback()
        session.write("DELETE FROM notes WHERE id = 'n2'")
    finally:
        session.close()
    status, body = await client.commit("c2", note("UPDATE", "n1", body="edited"))
    assert status == 200, body
    status, _ = await client.commit("c1", note("CREATE", "n1", body="from the engine"))
    assert status == 200  # a replay: nothing written, no event
    status, body = await client.commit("c1", note("DELETE", "n1"))
    assert (status, body["error"]) == (409, "idempotency_conflict")

    events = await all_events(client, limit=2)
    assert [(e["type"], e["entityId"], e.get("correlationId")) for e in events] == [
        ("CREATE", "n1", "c1"),
        ("CREATE", "n2", None),
        ("UPDATE", "n1", None),
        ("DELETE", "n2", None),
        ("UPDATE", "n1", "c2"),
    ]
    assert [e["id"] for e in events][::4] == ["c1:0", "c2:0"]
    assert events[0]["data"] == {"id": "n1", "body": "from the engine", "pinned": False}
    assert events[1]["data"] == created
    assert events[2]["data"] == pinned == {"id": "n1", "body": "from the engine", "pinned": True}
    assert "data" not in events[3]
    assert events[4]["data"] == await load(client, "n1")


async def test_the_capture_installs_again_safely(
    client: Client,
    database_url: str,  # noqa: F811
) -> None:
    again = NotesSource(database_url)  # the triggers dropped and installed again
    try:
        session = Session(database_url)
        try:
            session.write("INSERT INTO notes (id, body) VALUES ('n3', 'once')")
        finally:
            session.close()
        events = await all_events(client)
        assert [(e["type"], e["entityId"]) for e in events] == [("CREATE", "n3")]
    finally:
        again.engine.dispose()


async def test_the_example_passes_verify(database_url: str) -> None:  # noqa: F811
    source = NotesSource(database_url)
    try:
        fields = [FieldSpec("body", "text", nullable=False), FieldSpec("pinned", "boolean")]
        report = await verify(source, model="note", fields=fields)
    finally:
        source.engine.dispose()
    found = statuses(report)
    assert report.failed == [], [(o.name, o.detail) for o in report.failed]
    # Every check but list's (the example serves no list) ran and passed.
    assert {name for name, status in found.items() if status != "passed"} == {
        name for name in found if name.startswith("list-")
    }
    assert found["events-in-commit-order"] == "passed"
