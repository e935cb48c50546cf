"""Capture: writes made by the application itself, through a plain database
session (the standard library's sqlite3, psycopg, PyMySQL: never the project's code),
reach ``events`` exactly once, in commit order, with ``data`` equal to what
``load`` answered right after the write; the connector's own commits go
through the same triggers, once each."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector import SourceError
from connector.adapters.sql import ModelMap, SQLSource, create_database_engine, migrate
from connector.adapters.sql.capture import capture_sql, migrate_capture
from tests.helpers import TASKS_DDL, execute, fresh_database
from tests.test_sql_adapter import Client, create, key_type, quoted, update

DIALECTS = ["sqlite", "postgresql", "mariadb"]
# Where writers run concurrently (SQLite has one writer at a time: no case there).
CONCURRENT = ["postgresql", "mariadb"]
MAP = {"models": {"task": {"table": "tasks", "exclude": ["secret"]}}}


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        sqlite3.connect(tmp_path / "app.db").close()  # the file capture is installed in
    with fresh_database(request, request.param, tmp_path / "app.db") as url:
        yield url


def install(url: str, models: dict[str, Any] = MAP, *, remove: bool = False) -> list[str]:
    engine = create_database_engine(url)
    try:
        changes = migrate(engine)
        return changes + migrate_capture(engine, ModelMap.from_dict(models), remove=remove)
    finally:
        engine.dispose()


def serve_captured(url: str, ddl: str, model: str, table: str) -> tuple[Client, Session]:
    """``ddl``'s table captured and served as ``model``: a client of the
    adapter, and a plain session of the application's."""
    execute(url, ddl)
    models = {"models": {model: {"table": table}}}
    install(url, models)
    return Client(SQLSource(url, models)), Session(url)


@pytest.fixture
def captured(database_url: str) -> str:
    backend = sa.make_url(database_url).get_backend_name()
    execute(database_url, TASKS_DDL[backend], "ALTER TABLE tasks ADD COLUMN secret TEXT")
    install(database_url)
    return database_url


class Session:
    """A plain database session of the application's (not the project's code)."""

    def __init__(self, url: str) -> None:
        parsed = sa.make_url(url)
        self.postgres = parsed.get_backend_name() == "postgresql"
        self.mysql = parsed.get_backend_name() == "mysql"
        if self.mysql:
            import pymysql

            self.connection = pymysql.connect(
                host=parsed.host,
                port=parsed.port,
                user=parsed.username,
                database=parsed.database,
                charset="utf8mb4",
            )
        elif self.postgres:
            import psycopg

            self.connection: Any = psycopg.connect(
                host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database
            )
        else:
            self.connection = sqlite3.connect(str(parsed.database), isolation_level=None)
            self.connection.execute("PRAGMA busy_timeout=30000")

    def run(self, sql: str, *values: Any) -> None:
        if self.mysql:
            with self.connection.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), values or None)
            return
        sql = sql.replace("?", "%s") if self.postgres else sql
        self.connection.execute(sql, values)

    def stamp(self, text: str) -> str:
        """A UTC timestamp as a literal a timestamp column of this database takes."""
        return f"'{text}'" if self.mysql else f"'{text}+00'"

    def begin(self) -> None:
        if self.mysql:
            self.connection.begin()
        elif not self.postgres:
            self.connection.execute("BEGIN")

    def commit(self) -> None:
        if self.postgres or self.mysql:
            self.connection.commit()
        else:
            self.connection.execute("COMMIT")

    def rollback(self) -> None:
        if self.postgres or self.mysql:
            self.connection.rollback()
        else:
            self.connection.execute("ROLLBACK")

    def write(self, sql: str, *values: Any) -> None:
        self.begin()
        self.run(sql, *values)
        self.commit()

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
async def client(captured: str) -> AsyncIterator[Client]:
    source = SQLSource(captured, MAP)
    source.prepare()
    c = Client(source)
    c.source_url = captured  # type: ignore[attr-defined]
    yield c
    await c.close()


@pytest.fixture
def session(captured: str) -> Iterator[Session]:
    s = Session(captured)
    yield s
    s.close()


async def _warnings_of_probes(source: SQLSource, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings three probes in a row log."""
    with caplog.at_level(logging.WARNING, logger="connector.sql"):
        for _ in range(3):
            await source.probe()
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def all_events(client: Client, cursor: str | None = None, limit: int = 1000) -> list[Any]:
    found: list[Any] = []
    while True:
        page = await client.events(cursor, limit)
        found += page["events"]
        if not page["events"]:
            return found
        cursor = page["nextCursor"]


async def load(client: Client, id: str) -> Any:
    answer = await client.ok({"type": "load", "model": "task", "id": id})
    return answer["row"]


async def test_the_applications_own_writes_are_events_equal_to_load(
    client: Client, session: Session
) -> None:
    loaded = []
    session.write(
        "INSERT INTO tasks (id, title, priority, estimate, secret) VALUES ('t1', 'One', 3, 0.1, 'pw')"
    )
    loaded.append(await load(client, "t1"))
    session.write("UPDATE tasks SET done = true, estimate = 0.30000000000000004 WHERE id = 't1'")
    loaded.append(await load(client, "t1"))
    due = session.stamp("2024-05-06 07:08:09.123456")
    session.write(f"UPDATE tasks SET due_at = {due} WHERE id = 't1'")
    loaded.append(await load(client, "t1"))
    session.write("DELETE FROM tasks WHERE id = 't1'")
    events = await all_events(client)
    assert [(e["type"], e["model"], e["entityId"]) for e in events] == [
        ("CREATE", "task", "t1"),
        ("UPDATE", "task", "t1"),
        ("UPDATE", "task", "t1"),
        ("DELETE", "task", "t1"),
    ]
    assert [e["data"] for e in events[:3]] == loaded
    assert "data" not in events[3]  # null for a DELETE
    assert all("secret" not in e.get("data", {}) for e in events)
    assert [int(e["cursor"]) for e in events] == sorted(int(e["cursor"]) for e in events)
    assert len({e["id"] for e in events}) == 4


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
async def test_every_mysql_type_an_application_writes_is_an_event_equal_to_load(
    database_url: str,
) -> None:
    """MySQL's triggers store each value as its text (bytes as hex, a
    TIMESTAMP as its instant), and events decodes it as the driver decodes
    the text protocol: the same values as load, whatever the writer's
    time_zone; a change of case alone is a change."""
    client, session = serve_captured(
        database_url,
        "CREATE TABLE things (id VARCHAR(64) PRIMARY KEY, label VARCHAR(40), price DECIMAL(10, 3), "
        "doc JSON, flag BOOLEAN, big BIGINT UNSIGNED, ratio DOUBLE, small FLOAT, "
        "day DATE, clock TIME(3), at_ts TIMESTAMP(6) NULL, due DATETIME, raw VARBINARY(16), "
        "blob_value BLOB, kind ENUM('a', 'b'), tags SET('x', 'y'), born YEAR, bits BIT(10))",
        "thing",
        "things",
    )
    try:
        session.run("SET time_zone = '+05:30'")  # the writer's own, not the connector's
        session.write(
            "INSERT INTO things VALUES ('x', 'Straße 🦊', 12.345, '{\"k\": [1, null], \"é\": \"✓\"}', "
            "true, 18446744073709551615, 0.30000000000000004, 0.1, '2024-02-29', '-01:02:03.456', "
            "'2024-05-06 07:08:09.123456', '2024-05-06 07:08:09', X'00ff10', X'cafe', 'b', "
            "'x,y', 2024, b'1000000001')"
        )
        created = (await client.ok({"type": "load", "model": "thing", "id": "x"}))["row"]
        session.write("UPDATE things SET label = 'STRASSE 🦊' WHERE id = 'x'")
        session.write("UPDATE things SET label = 'strasse 🦊' WHERE id = 'x'")  # case only
        lowered = (await client.ok({"type": "load", "model": "thing", "id": "x"}))["row"]
        session.write("UPDATE things SET label = NULL, at_ts = NULL, raw = NULL WHERE id = 'x'")
        nulls = (await client.ok({"type": "load", "model": "thing", "id": "x"}))["row"]
        events = await all_events(client)
        assert [e["type"] for e in events] == ["CREATE", "UPDATE", "UPDATE", "UPDATE"]
        assert events[0]["data"] == created
        assert created["atTs"].startswith("2024-05-06T01:38:09.123456")  # +05:30 as UTC
        assert (created["doc"], created["flag"], created["ratio"], created["bits"]) == (
            {"k": [1, None], "é": "✓"},
            True,
            0.30000000000000004,
            513,
        )
        assert (created["raw"], created["blobValue"], sorted(created["tags"])) == (
            "AP8Q",
            "yv4=",
            ["x", "y"],
        )
        assert events[2]["data"] == lowered
        assert events[3]["data"] == nulls and nulls["label"] is None
    finally:
        session.close()
        await client.close()


async def test_a_write_of_only_an_excluded_column_or_a_rollback_is_no_event(
    client: Client, session: Session
) -> None:
    session.write("INSERT INTO tasks (id, title) VALUES ('t1', 'One')")
    session.write("UPDATE tasks SET secret = 'changed' WHERE id = 't1'")
    session.write("UPDATE tasks SET title = 'One' WHERE id = 't1'")  # the same value
    session.begin()
    session.run("UPDATE tasks SET title = 'Never' WHERE id = 't1'")
    session.run("INSERT INTO tasks (id, title) VALUES ('t2', 'Never')")
    session.rollback()
    events = await all_events(client)
    assert [(e["type"], e["entityId"]) for e in events] == [("CREATE", "t1")]


async def test_archiving_in_the_database_is_an_archive_event(
    client: Client, session: Session
) -> None:
    session.write("INSERT INTO tasks (id, title) VALUES ('t1', 'One')")
    archived = session.stamp("2024-01-02 03:04:05")
    session.write(f"UPDATE tasks SET archived_at = {archived} WHERE id = 't1'")
    session.write("UPDATE tasks SET archived_at = NULL WHERE id = 't1'")
    events = await all_events(client)
    assert [e["type"] for e in events] == ["CREATE", "ARCHIVE", "UNARCHIVE"]


async def test_the_connectors_own_commits_are_recorded_once(
    client: Client, session: Session
) -> None:
    status, _ = await client.commit(
        "c1",
        create("a", priority=1),
        {**update("a", title="A2"), "transactionId": "tx-2"},
        {"type": "ARCHIVE", "model": "task", "id": "a"},
        {"type": "DELETE", "model": "task", "id": "missing"},
    )
    assert status == 200
    session.write("UPDATE tasks SET priority = 9 WHERE id = 'a'")
    events = await all_events(client)
    assert [(e["id"], e["type"], e.get("correlationId")) for e in events] == [
        ("c1:0", "CREATE", "c1"),
        ("c1:1", "UPDATE", "c1"),
        ("c1:2", "ARCHIVE", "c1"),
        (events[3]["id"], "UPDATE", None),
    ]
    assert events[1]["transactionId"] == "tx-2"
    assert events[2]["data"]["title"] == "A2" and events[2]["data"]["archivedAt"] is not None
    assert events[3]["data"] == await load(client, "a")
    # A replay writes nothing more.
    status, _ = await client.commit("c1", create("a", priority=1), update("a", title="A2"))
    assert len(await all_events(client)) == 4


async def connector_commits(client: Client) -> list[dict[str, Any]]:
    """A run of connector commits, no-ops included; the events they wrote,
    without what differs between two runs (cursors, clocks)."""
    archive = {"type": "ARCHIVE", "model": "task", "id": "a"}
    unarchive = {"type": "UNARCHIVE", "model": "task", "id": "a"}
    commits = [
        ("c1", create("a", priority=1), {**update("a", title="A2"), "transactionId": "tx-2"}),
        ("c2", update("a", title="A2"), update("a"), archive),
        ("c3", unarchive, unarchive, {"type": "DELETE", "model": "task", "id": "missing"}),
        ("c4", {"type": "DELETE", "model": "task", "id": "a"}, create("b")),
    ]
    for key, *operations in commits:
        status, body = await client.commit(key, *operations)
        assert status == 200, body
    events = await all_events(client)
    for event in events:
        del event["cursor"], event["occurredAt"]
        if (event.get("data") or {}).get("archivedAt") is not None:
            event["data"]["archivedAt"] = "archived"  # the clock's, not the same twice
    return events


async def test_the_connectors_own_commits_write_the_events_they_wrote_without_capture(
    client: Client, captured: str
) -> None:
    """One event per operation that found its row, as the engine's reference
    adapters write them: a no-op UPDATE, an UPDATE without values and an
    UNARCHIVE of a row that is not archived each write one, captured or not."""
    with_capture = await connector_commits(client)
    assert [e["id"] for e in with_capture] == [
        "c1:0", "c1:1", "c2:0", "c2:1", "c2:2", "c3:0", "c3:1", "c4:0", "c4:1",
    ]  # fmt: skip
    install(captured, remove=True)
    execute(
        captured, "DELETE FROM tasks", "DELETE FROM ablo_outbox", "DELETE FROM ablo_idempotency"
    )
    without = Client(SQLSource(captured, MAP))
    try:
        assert await connector_commits(without) == with_capture
    finally:
        await without.close()


async def test_a_rows_events_follow_its_writes_across_the_application_and_the_connector(
    client: Client, session: Session
) -> None:
    """The application's write, then the connector's commit of the same row,
    then the application's again: its events come in that order."""
    session.write("INSERT INTO tasks (id, title) VALUES ('a', 'by the application')")
    session.write("UPDATE tasks SET priority = 1 WHERE id = 'a'")
    status, body = await client.commit("c1", update("a", title="by the connector"))
    assert status == 200, body
    session.write("UPDATE tasks SET priority = 2 WHERE id = 'a'")
    events = await all_events(client)
    assert [(e["type"], e.get("correlationId")) for e in events] == [
        ("CREATE", None),
        ("UPDATE", None),
        ("UPDATE", "c1"),
        ("UPDATE", None),
    ]
    assert [e["data"]["priority"] for e in events] == [None, 1, 1, 2]
    assert events[3]["data"] == await load(client, "a")


async def test_an_update_of_a_rows_id_is_a_delete_and_a_create(
    client: Client, session: Session
) -> None:
    session.write("INSERT INTO tasks (id, title) VALUES ('old', 'Moved')")
    session.write("UPDATE tasks SET id = 'new' WHERE id = 'old'")
    events = await all_events(client)
    assert [(e["type"], e["entityId"]) for e in events] == [
        ("CREATE", "old"),
        ("DELETE", "old"),
        ("CREATE", "new"),
    ]
    assert "data" not in events[1]
    assert events[2]["data"] == await load(client, "new")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # roles and grants
async def test_retention_without_delete_privilege_warns_once(
    captured: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = f"nodel_{uuid.uuid4().hex[:8]}"
    execute(
        captured,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON tasks TO {role}",
        f"GRANT SELECT, INSERT, UPDATE ON ablo_idempotency TO {role}",
        f"GRANT SELECT, INSERT ON ablo_outbox TO {role}",
        f"GRANT SELECT ON ablo_capture TO {role}",
        f"GRANT USAGE ON SEQUENCE ablo_outbox_cursor_seq TO {role}",
    )
    # Every probe prunes (the daemon's probes prune every 10 s at most).
    monkeypatch.setattr("connector.adapters.sql.source._PRUNE_EVERY_SECONDS", 0.0)
    source = SQLSource(captured.replace("postgres@", f"{role}@"), MAP)
    try:
        source.prepare()
        warnings = await _warnings_of_probes(source, caplog)
        assert len(warnings) == 1, warnings
        assert "may not delete from ablo_outbox and ablo_idempotency" in warnings[0]
        assert "--print-grants" in warnings[0]
        assert source.probe_gauges()["ablo_connector_outbox_events"] == 0  # still measured
    finally:
        await source.aclose()
        execute(captured, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


async def test_a_bulk_update_of_10000_rows_pages_out_completely(
    client: Client, session: Session
) -> None:
    session.begin()
    if session.postgres:
        session.run(
            "INSERT INTO tasks (id, title) SELECT 'r' || i, 't' FROM generate_series(1, 10000) i"
        )
    elif session.mysql:
        session.run("SET SESSION max_recursive_iterations = 10000")  # MariaDB's default: 1000
        session.run(
            "INSERT INTO tasks (id, title) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
            "SELECT i + 1 FROM n WHERE i < 10000) SELECT CONCAT('r', i), 't' FROM n"
        )
    else:
        session.run(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) "
            "INSERT INTO tasks (id, title) SELECT 'r' || i, 't' FROM n"
        )
    session.commit()
    session.write("UPDATE tasks SET priority = 7")
    if session.mysql:
        # A page moves one bounded batch of what the triggers staged, not all
        # 20,000 rows: the pages simply go on.
        first = await client.events(None, 1000)
        assert len(first["events"]) == 1000
        url = client.source_url  # type: ignore[attr-defined]
        assert execute(url, "SELECT count(*) FROM ablo_capture_pending")[0] == [(19000,)]
    events = await all_events(client, limit=1000)
    assert len(events) == 20000
    updates = events[10000:]
    assert {e["type"] for e in updates} == {"UPDATE"}
    assert len({e["entityId"] for e in updates}) == 10000
    assert all(e["data"]["priority"] == 7 for e in updates)


async def test_capture_drift_is_reported_and_migrate_brings_it_up_to_date(
    captured: str, caplog: pytest.LogCaptureFixture
) -> None:
    execute(captured, "ALTER TABLE tasks ADD COLUMN notes TEXT")
    source = SQLSource(captured, MAP)
    with caplog.at_level(logging.WARNING, logger="connector.sql"):
        source.prepare()
    lines = [r.getMessage() for r in caplog.records if "capture" in r.getMessage()]
    assert len(lines) == 1
    assert "model 'task'" in lines[0] and "'notes' added" in lines[0]
    assert "ablo-connector migrate --capture" in lines[0]
    with pytest.raises(SourceError) as stale:
        await source.probe()
    assert stale.value.code == "source_capture_stale"
    await source.aclose()

    changes = install(captured)
    assert changes == ["updated the capture of model 'task' (table tasks): column 'notes' added"]
    assert install(captured) == []  # again: nothing to change
    source = SQLSource(captured, MAP)
    source.prepare()
    await source.probe()
    client = Client(source)
    try:
        Session(captured).write("INSERT INTO tasks (id, title, notes) VALUES ('n', 'N', 'x')")
        (event,) = await all_events(client)
        assert event["data"]["notes"] == "x"
    finally:
        await client.close()


async def test_a_running_connector_is_ready_again_once_migrate_repairs_its_capture(
    captured: str,
) -> None:
    """The fix /readyz asks for takes effect at the next probe, not at a restart:
    for a column added before the connector started, and for one added while
    it runs (which it then serves too)."""
    execute(captured, "ALTER TABLE tasks ADD COLUMN notes TEXT")
    client = Client(SQLSource(captured, MAP))
    try:
        client.source.prepare()
        with pytest.raises(SourceError) as stale:
            await client.source.probe()
        assert stale.value.code == "source_capture_stale"
        install(captured)
        await client.source.probe()  # ready again: nothing raised
        execute(captured, "ALTER TABLE tasks ADD COLUMN owner TEXT")
        await client.source.probe()  # the capture matches what is served: still ready
        install(captured)  # now it records `owner`, which this connector does not serve yet
        await client.source.probe()
        Session(captured).write(
            "INSERT INTO tasks (id, title, notes, owner) VALUES ('n', 'N', 'x', 'ann')"
        )
        (event,) = await all_events(client)
        assert (event["data"]["notes"], event["data"]["owner"]) == ("x", "ann")
        assert event["data"] == await load(client, "n")
    finally:
        await client.close()


async def test_a_capture_installed_under_a_running_connector_records_its_commits_once(
    database_url: str,
) -> None:
    backend = sa.make_url(database_url).get_backend_name()
    execute(database_url, TASKS_DDL[backend], "ALTER TABLE tasks ADD COLUMN secret TEXT")
    install(database_url, remove=True)  # the ledger and the outbox, no capture yet
    client = Client(SQLSource(database_url, MAP))
    try:
        client.source.prepare()
        await client.source.probe()
        assert (await client.commit("before", create("a")))[0] == 200
        install(database_url)
        await client.source.probe()
        assert (await client.commit("after", create("b")))[0] == 200
        assert [e["id"] for e in await all_events(client)] == ["before:0", "after:0"]
        install(database_url, remove=True)
        # Before the probe notices: events pages go on (MySQL: no staging table left).
        assert [e["id"] for e in await all_events(client)] == ["before:0", "after:0"]
        await client.source.probe()
        assert (await client.commit("removed", create("c")))[0] == 200
        assert [e["id"] for e in await all_events(client)][-1:] == ["removed:0"]
    finally:
        await client.close()


async def test_a_model_renamed_in_the_map_is_capture_drift(captured: str) -> None:
    source = SQLSource(captured, {"models": {"job": {"table": "tasks"}}})
    try:
        source.prepare()
        with pytest.raises(SourceError) as stale:
            await source.probe()
        assert stale.value.code == "source_capture_stale"
        assert "captured as model 'task', but served as model 'job'" in stale.value.message
    finally:
        await source.aclose()


async def test_capture_false_opts_out_and_remove_drops_it(captured: str) -> None:
    opted_out = {"models": {"task": {"table": "tasks", "capture": False}}}
    assert install(captured, opted_out) == ["removed the capture of model 'task' (table tasks)"]
    Session(captured).write("INSERT INTO tasks (id, title) VALUES ('x', 'X')")
    assert install(captured) == ["installed the capture of model 'task' (table tasks)"]
    assert install(captured, remove=True) == ["removed the capture of model 'task' (table tasks)"]
    Session(captured).write("INSERT INTO tasks (id, title) VALUES ('y', 'Y')")
    client = Client(SQLSource(captured, MAP))
    try:
        assert await all_events(client) == []
        # Without capture, the connector writes its own events, as before.
        status, _ = await client.commit("c", create("z"))
        assert status == 200
        assert [e["id"] for e in await all_events(client)] == ["c:0"]
    finally:
        await client.close()


async def test_what_was_written_before_a_capture_is_removed_reaches_events(
    captured: str,
) -> None:
    """Where the triggers stage their writes (MySQL, MariaDB), migrate moves
    what they staged into the outbox before it drops a model's capture or
    the staging table; with no connector paging in between."""
    session = Session(captured)
    try:
        session.write("INSERT INTO tasks (id, title) VALUES ('k', 'kept')")
        opted_out = {"models": {"task": {"table": "tasks", "capture": False}}}
        install(captured, opted_out)
        session.write("INSERT INTO tasks (id, title) VALUES ('x', 'not captured')")
        install(captured)
        session.write("INSERT INTO tasks (id, title) VALUES ('m', 'moved')")
        install(captured, remove=True)
    finally:
        session.close()
    client = Client(SQLSource(captured, MAP))
    try:
        assert [e["entityId"] for e in await all_events(client)] == ["k", "m"]
    finally:
        await client.close()


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
async def test_a_user_that_may_not_move_staged_writes_is_told_once(
    captured: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = f"nomove_{uuid.uuid4().hex[:8]}"  # '%%': the driver's placeholders
    name = sa.make_url(captured).database
    execute(
        captured,
        f"CREATE USER '{user}'@'%%'",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{name}`.tasks TO '{user}'@'%%'",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{name}`.ablo_idempotency TO '{user}'@'%%'",
        f"GRANT SELECT, INSERT, DELETE ON `{name}`.ablo_outbox TO '{user}'@'%%'",
        f"GRANT SELECT ON `{name}`.ablo_capture TO '{user}'@'%%'",
        f"GRANT SELECT ON `{name}`.ablo_capture_pending TO '{user}'@'%%'",  # no DELETE
    )
    Session(captured).write("INSERT INTO tasks (id, title) VALUES ('s', 'staged')")
    source = SQLSource(captured.replace("root@", f"{user}@"), MAP)
    try:
        source.prepare()
        warnings = await _warnings_of_probes(source, caplog)
        assert len(warnings) == 1, warnings
        assert "may not read or delete the rows the capture triggers staged" in warnings[0]
        assert "--print-grants" in warnings[0]
        execute(captured, f"GRANT DELETE ON `{name}`.ablo_capture_pending TO '{user}'@'%%'")
        await source.probe()
        assert source.probe_gauges()["ablo_connector_outbox_events"] == 1
    finally:
        await source.aclose()
        execute(captured, f"DROP USER IF EXISTS '{user}'@'%%'")


@pytest.mark.parametrize("database_url", CONCURRENT, indirect=True)
async def test_a_long_transaction_stalls_no_writer_and_its_event_is_not_skipped(
    client: Client, captured: str
) -> None:
    long_running = Session(captured)
    other = Session(captured)
    try:
        long_running.run("INSERT INTO tasks (id, title) VALUES ('early', 'drawn first')")
        # Another writer commits meanwhile, without waiting for the long one.
        finished = threading.Event()

        def write() -> None:
            other.write("INSERT INTO tasks (id, title) VALUES ('later', 'committed first')")
            finished.set()

        thread = threading.Thread(target=write)
        thread.start()
        assert await asyncio.to_thread(finished.wait, 30)
        thread.join()
        first = await client.events()
        assert [e["entityId"] for e in first["events"]] == ["later"]
        long_running.commit()
        rest = await all_events(client, first["nextCursor"])
        assert [e["entityId"] for e in rest] == ["early"]
    finally:
        long_running.close()
        other.close()


@pytest.mark.parametrize("database_url", CONCURRENT, indirect=True)
async def test_writers_committing_out_of_draw_order_are_each_read_once(
    client: Client, captured: str
) -> None:
    """Three open transactions write in one order and commit in the reverse
    one, while a reader pages: each page holds exactly what committed since
    the last, and nothing is skipped or read twice."""
    sessions = [Session(captured) for _ in range(3)]
    try:
        for number, session in enumerate(sessions):
            session.begin()
            session.run(f"INSERT INTO tasks (id, title) VALUES ('o{number}', 't')")
        seen: list[str] = []
        cursor = None
        for number in (2, 1, 0):
            page = await client.events(cursor)
            assert page["events"] == []
            sessions[number].commit()
            page = await client.events(cursor)
            assert [e["entityId"] for e in page["events"]] == [f"o{number}"]
            seen += [e["entityId"] for e in page["events"]]
            cursor = page["nextCursor"]
        assert (await client.events(cursor))["events"] == []
        assert [e["entityId"] for e in await all_events(client)] == ["o2", "o1", "o0"]
    finally:
        for session in sessions:
            session.close()


@pytest.mark.parametrize("database_url", CONCURRENT, indirect=True)
async def test_concurrent_writers_are_read_in_commit_order_without_gaps(
    client: Client, captured: str
) -> None:
    writers = 6
    per_writer = 40

    def work(number: int) -> None:
        session = Session(captured)
        try:
            for index in range(per_writer):
                session.write(f"INSERT INTO tasks (id, title) VALUES ('w{number}-{index}', 't')")
        finally:
            session.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    seen: list[str] = []
    cursor = None
    done: Callable[[], bool] = lambda: not any(t.is_alive() for t in threads)  # noqa: E731
    while True:
        finished = done()
        page = await client.events(cursor, 7)
        seen += [e["entityId"] for e in page["events"]]
        cursor = page.get("nextCursor")  # none before the first event
        if finished and not page["events"]:
            break
    for thread in threads:
        thread.join()
    assert len(seen) == writers * per_writer
    assert len(set(seen)) == len(seen)


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
async def test_a_connector_commit_refused_midway_leaves_no_event_and_nothing_staged(
    client: Client, session: Session
) -> None:
    """A commit refused after it told the triggers which rows it writes and
    wrote one of them: rolled back, it leaves no event, staged or not; the
    next commit, and the application's write of that row, are recorded."""
    status, _ = await client.commit("c1", create("a"))
    assert status == 200
    status, body = await client.commit("c2", create("b"), create("a"))  # a duplicate key
    assert status == 409, body
    status, _ = await client.commit("c3", create("c"))
    assert status == 200
    url = client.source_url  # type: ignore[attr-defined]
    assert execute(url, "SELECT count(*) FROM ablo_capture_pending")[0] == [(0,)]
    session.write("INSERT INTO tasks (id, title) VALUES ('b', 'by the application')")
    events = await all_events(client)
    assert [(e["entityId"], e.get("correlationId")) for e in events] == [
        ("a", "c1"),
        ("c", "c3"),
        ("b", None),
    ]


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
def test_the_handler_capture_helpers_say_they_are_not_offered_on_mariadb(
    captured: str,
) -> None:
    from connector.adapters.sql.capture import table_capture_statements
    from connector.errors import ConfigError

    engine = create_database_engine(captured)
    try:
        with engine.connect() as connection, pytest.raises(ConfigError) as refused:
            table_capture_statements(connection, "tasks", model="task", columns=["id"])
        assert "SQLite and PostgreSQL" in str(refused.value)
        assert "migrate --capture" in str(refused.value)
    finally:
        engine.dispose()


# ------------------------------------------------------------ retention


async def test_retention_prunes_only_what_the_engine_has_read_and_expired_ledger_rows(
    client: Client, session: Session
) -> None:
    for index in range(5):
        session.write(f"INSERT INTO tasks (id, title) VALUES ('p{index}', 't')")
    await client.source.probe()  # where triggers stage their rows, it moves them to the outbox
    status, _ = await client.commit("fresh", create("q"))
    assert status == 200
    old = "'2000-01-01 00:00:00'"
    session.write(f"UPDATE ablo_outbox SET created_at = {old}")
    session.write(f"UPDATE ablo_idempotency SET expires_at = {old}")
    session.write(
        "INSERT INTO ablo_idempotency (client_tx_id, response, expires_at) "
        "VALUES ('kept', '[]', '2999-01-01 00:00:00')"
    )
    source = client.source
    # However old, nothing the engine has not paged past goes.
    assert await source.prune() == (0, 1)
    await source.probe()
    gauges = source.probe_gauges()
    assert gauges["ablo_connector_outbox_events"] == 6
    assert gauges["ablo_connector_outbox_oldest_unread_age_seconds"] > 365 * 86400

    first = await client.events(None, 3)
    assert await source.prune() == (0, 0)  # the engine has not asked past these three yet
    second = await client.events(first["nextCursor"], 3)  # so it has read the first three
    assert await source.prune() == (3, 0)
    rest = await all_events(client, first["nextCursor"])
    assert [e["id"] for e in rest] == [e["id"] for e in second["events"]]
    assert [e["entityId"] for e in rest] == ["p3", "p4", "q"]
    # The cursor the engine holds stays valid, and so do those before it.
    assert (await client.events(first["nextCursor"]))["events"] == second["events"]
    await source.probe()
    assert source.probe_gauges()["ablo_connector_outbox_events"] == 3
    ledger = [
        row[0]
        for row in execute(
            client.source_url,  # type: ignore[attr-defined]
            "SELECT client_tx_id FROM ablo_idempotency",
        )[0]
    ]
    assert ledger == ["kept"]


async def test_a_refused_events_cursor_lets_retention_prune_nothing_unread(
    client: Client, session: Session
) -> None:
    status, _ = await client.commit("kept-unread", create("u"))
    assert status == 200
    session.write("UPDATE ablo_outbox SET created_at = '2000-01-01 00:00:00'")
    status, answer = await client({"type": "events", "cursor": "999999999999", "limit": 3})
    assert (status, answer["error"]) == (400, "source_cursor_invalid")
    assert await client.source.prune() == (0, 0)
    assert [e["entityId"] for e in await all_events(client, None)] == ["u"]


_FOLLOWED = {"models": {"project": {"table": "projects"}, "item": {"table": "items"}}}


async def test_a_change_a_later_operation_makes_to_a_row_the_commit_wrote_is_recorded(
    database_url: str,
) -> None:
    """The triggers leave the rows a commit writes to it: when a later
    operation of the commit changes one of them (a foreign key's cascade here),
    the commit records that change, in the order it happened."""
    key = key_type(database_url)
    execute(
        database_url,
        f"CREATE TABLE projects (id {key} PRIMARY KEY, name TEXT)",
        f"CREATE TABLE items (id {key} PRIMARY KEY, project_id {key} "
        "REFERENCES projects (id) ON DELETE CASCADE, owner_id "
        f"{key} REFERENCES projects (id) ON DELETE SET NULL)",
    )
    engine = create_database_engine(database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    install(database_url, _FOLLOWED)
    client = Client(SQLSource(database_url, _FOLLOWED))
    try:
        status, body = await client.commit(
            "c1",
            {"type": "CREATE", "model": "project", "id": "p1", "input": {"name": "P"}},
            {"type": "CREATE", "model": "project", "id": "p2", "input": {"name": "Q"}},
            {"type": "CREATE", "model": "item", "id": "i1", "input": {"projectId": "p1", "ownerId": "p2"}},
            {"type": "CREATE", "model": "item", "id": "i2", "input": {"projectId": "p2", "ownerId": "p2"}},
            {"type": "DELETE", "model": "project", "id": "p1"},  # cascades to i1
            {"type": "UPDATE", "model": "project", "id": "p2", "input": {"name": "R"}},
        )  # fmt: skip
        assert status == 200, body
        events = await all_events(client)
        assert [(e["model"], e["type"], e["entityId"], e["correlationId"]) for e in events] == [
            ("project", "CREATE", "p1", "c1"),
            ("project", "CREATE", "p2", "c1"),
            ("item", "CREATE", "i1", "c1"),
            ("item", "CREATE", "i2", "c1"),
            ("item", "DELETE", "i1", "c1"),  # the cascade, before the DELETE that made it
            ("project", "DELETE", "p1", "c1"),
            ("project", "UPDATE", "p2", "c1"),  # nothing else changed: no other event
        ]
        assert events[4].get("data") is None
        # The same commit again is a replay: the ledger's answer, no new event.
        status, _ = await client.commit(
            "c1",
            {"type": "CREATE", "model": "project", "id": "p1", "input": {"name": "P"}},
            {"type": "CREATE", "model": "project", "id": "p2", "input": {"name": "Q"}},
            {"type": "CREATE", "model": "item", "id": "i1", "input": {"projectId": "p1", "ownerId": "p2"}},
            {"type": "CREATE", "model": "item", "id": "i2", "input": {"projectId": "p2", "ownerId": "p2"}},
            {"type": "DELETE", "model": "project", "id": "p1"},
            {"type": "UPDATE", "model": "project", "id": "p2", "input": {"name": "R"}},
        )  # fmt: skip
        assert status == 200
        assert len(await all_events(client)) == len(events)
    finally:
        await client.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_dates_python_cannot_hold_are_served_and_never_stall_events(
    database_url: str,
) -> None:
    """PostgreSQL holds 'infinity', dates BC and 24:00, which Python's types do
    not: such a row is served with the value as PostgreSQL writes it. Read
    strictly, its load and every page holding it failed, blaming the caller,
    and its captured change failed every events page from there on."""
    client, session = serve_captured(
        database_url,
        "CREATE TABLE terms (id TEXT PRIMARY KEY, starts DATE, ends TIMESTAMPTZ, "
        "closes TIME, note TEXT)",
        "term",
        "terms",
    )
    try:
        session.write(
            "INSERT INTO terms VALUES ('open', '0100-01-01 BC', 'infinity', '24:00', 'a'), "
            "('plain', '2024-02-29', '2024-05-06 07:08:09+00', '23:59', 'b')"
        )
        loaded = (await client.ok({"type": "load", "model": "term", "id": "open"}))["row"]
        assert (loaded["starts"], loaded["ends"], loaded["closes"]) == (
            "0100-01-01 BC",
            "infinity",
            "24:00:00",
        )
        page = await client.ok({"type": "list", "model": "term", "query": {"orderBy": "id"}})
        assert [row["id"] for row in page["rows"]] == ["open", "plain"]
        listed = {"where": [["id", "IN", ["open", "plain"]]], "orderBy": "id"}  # SQLAlchemy's path
        assert (await client.ok({"type": "list", "model": "term", "query": listed}))["rows"] == (
            page["rows"]
        )
        assert page["rows"][1]["starts"] == "2024-02-29"  # the others as before
        # Served values are read back: as a filter, a cursor and a write.
        for field in ("starts", "ends"):
            query = {"where": [[field, "=", loaded[field]]]}
            found = await client.ok({"type": "list", "model": "term", "query": query})
            assert [row["id"] for row in found["rows"]] == ["open"]
            ids, cursor = [], None
            for _ in range(3):
                query = {"orderBy": field, "order": "desc", "limit": 1}
                if cursor is not None:
                    query["cursor"] = cursor
                paged = await client.ok({"type": "list", "model": "term", "query": query})
                ids += [row["id"] for row in paged["rows"]]
                if (cursor := paged.get("nextCursor")) is None:
                    break
            assert ids == (["plain", "open"] if field == "starts" else ["open", "plain"])
        status, answer = await client.commit(
            "c_note", update_term("open", note="c", ends=loaded["ends"])
        )
        assert status == 200 and answer["rows"][0]["ends"] == "infinity", answer
        status, answer = await client.commit("c_bad", update_term("open", ends="soon"))
        assert (status, answer["error"]) == (400, "source_value_invalid"), answer
        session.write("UPDATE terms SET note = 'd' WHERE id = 'plain'")  # a later, unrelated write
        events = await all_events(client)
        assert [(e["entityId"], e["data"]["note"]) for e in events] == [
            ("open", "a"),
            ("plain", "b"),
            ("open", "c"),
            ("plain", "d"),
        ]
        assert events[0]["data"] == {**loaded, "note": "a"}
    finally:
        session.close()
        await client.close()


def update_term(id: str, **input: Any) -> dict[str, Any]:
    return {"type": "UPDATE", "model": "term", "id": id, "input": input}


async def test_a_column_whose_name_holds_a_percent_sign_is_captured(database_url: str) -> None:
    """psycopg and PyMySQL read ``%`` in the trigger's DDL as a placeholder:
    the column's name went into the trigger's text mangled, and its changes
    into events without it."""
    dialect = sa.make_url(database_url).get_backend_name()
    name = quoted(database_url, "rate%off")
    # Through SQLAlchemy's exec_driver_sql, psycopg and PyMySQL read % as a placeholder.
    escaped = name if dialect == "sqlite" else name.replace("%", "%%")
    client, session = serve_captured(
        database_url,
        f"CREATE TABLE offers (id {key_type(database_url)} PRIMARY KEY, {escaped} TEXT)",
        "offer",
        "offers",
    )
    try:
        # The application's psycopg session passes parameters too; PyMySQL's none.
        written = escaped if dialect == "postgresql" else name
        session.write(f"INSERT INTO offers (id, {written}) VALUES ('o1', 'ten')")
        loaded = (await client.ok({"type": "load", "model": "offer", "id": "o1"}))["row"]
        assert loaded == {"id": "o1", "rate%off": "ten"}
        events = await all_events(client)
        assert [e["data"] for e in events] == [loaded]
    finally:
        session.close()
        await client.close()
    # What --print-sql prints is for psql, which reads no placeholder: each % once.
    engine = create_database_engine(database_url)
    try:
        printed = "\n".join(
            capture_sql(engine, ModelMap.from_dict({"models": {"offer": {"table": "offers"}}}))
        )
    finally:
        engine.dispose()
    assert name in printed and "%%" not in printed
