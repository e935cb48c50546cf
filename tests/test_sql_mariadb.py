"""The SQL adapter on MySQL's terms, against a private MariaDB.

The behaviour every database shares is judged in test_sql_adapter.py, on
MariaDB too; these are what MySQL and MariaDB do differently and the
adapter must answer for: collations that ignore case and accents, 4-byte
characters, DATETIME and TIMESTAMP as UTC, DECIMAL, JSON and TINYINT(1)
columns, zero dates and out-of-range values, the strict sql_mode, the
outbox lock, and a server that refuses, vanishes or stalls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from connector import ConfigError, SourceError
from connector.adapters.sql import SQLSource, create_database_engine
from tests.helpers import execute
from tests.mariadb import PrivateMariaDB, create_database, drop_database, require_password
from tests.test_sql_adapter import MODELS, Client, create, prepare, scalar

# The lock name the adapter takes around outbox writes (see dialects/mysql.py).
OUTBOX_LOCK = "LEFT(CONCAT('ablo_outbox.', DATABASE()), 64)"


@pytest.fixture
async def database(mariadb_server: PrivateMariaDB) -> AsyncIterator[str]:
    """A fresh database on the shared server, with tasks, the ledger and the outbox."""
    url = create_database(mariadb_server)
    try:
        yield prepare(url)
    finally:
        drop_database(mariadb_server, url)


def served(url: str, table: str, ddl: str, **options: Any) -> Client:
    execute(url, ddl)
    return Client(SQLSource(url, {"models": {table: {"table": table}}}, **options))


def ids(page: dict[str, Any]) -> list[str]:
    return sorted(row["id"] for row in page["rows"])


async def wait_until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------ collations


async def test_like_is_case_and_accent_sensitive_where_the_collation_is_not(
    database: str,
) -> None:
    """MariaDB's default collation (utf8mb4_general_ci) finds 'Résumé' for
    LIKE 'resume': the adapter compares patterns under utf8mb4_bin, so LIKE
    is exact and ILIKE ignores case only, as on PostgreSQL."""
    client = Client(SQLSource(database, MODELS))
    try:
        titles = {"a": "Résumé", "b": "resume", "c": "RESUME", "d": "résumé"}
        await client.commit("c_rows", *(create(i, title=t) for i, t in titles.items()))
        cases = [
            ("LIKE", "resume", ["b"]),
            ("LIKE", "RES%", ["c"]),
            ("LIKE", "r_sum_", ["b", "d"]),
            ("NOT LIKE", "resume", ["a", "c", "d"]),
            ("ILIKE", "resume", ["b", "c"]),
            ("ILIKE", "résumé", ["a", "d"]),
            ("NOT ILIKE", "resume", ["a", "d"]),
        ]
        for op, pattern, expected in cases:
            page = await client.list(where=[["title", op, pattern]])
            assert ids(page) == expected, (op, pattern)
        # Equality is the column's own, as the database defines it.
        assert ids(await client.list(where=[["title", "resume"]])) == ["a", "b", "c", "d"]
    finally:
        await client.close()


async def test_a_unique_key_the_collation_considers_equal_is_a_409(database: str) -> None:
    client = served(
        database,
        "people",
        "CREATE TABLE people (id VARCHAR(64) PRIMARY KEY, email VARCHAR(100) NOT NULL UNIQUE)",
    )
    try:
        person = {"type": "CREATE", "model": "people", "id": "p1", "input": {"email": "ada@x.io"}}
        assert (await client.commit("c_first", person))[0] == 200
        twins = [
            {"type": "CREATE", "model": "people", "id": "p2", "input": {"email": "ADA@X.IO"}},
            {"type": "CREATE", "model": "people", "id": "P1", "input": {"email": "other@x.io"}},
        ]
        for n, operation in enumerate(twins):
            status, body = await client.commit(f"c_twin_{n}", operation)
            assert (status, body["error"]) == (409, "source_constraint_violation"), body
            assert "duplicate key" in body["message"]
            assert "ADA@X.IO" not in body["message"] and "'P1'" not in body["message"]
        assert client.source.healthy
    finally:
        await client.close()


# ------------------------------------------------------------ values


async def test_four_byte_characters_round_trip(database: str) -> None:
    client = Client(SQLSource(database, MODELS))
    text = "note 🦊𝄞 ✓"  # two characters outside the BMP: four bytes each in UTF-8
    try:
        status, body = await client.commit("c_utf8", create("t1", title=text))
        assert (status, body["rows"][0]["title"]) == (200, text)
        assert (await client.ok({"type": "load", "model": "task", "id": "t1"}))["row"][
            "title"
        ] == text
        assert ids(await client.list(where=[["title", "LIKE", "%🦊%"]])) == ["t1"]
        assert (await client.events())["events"][0]["data"]["title"] == text
        assert scalar(database, "SELECT OCTET_LENGTH(title) FROM tasks") == len(text.encode())
    finally:
        await client.close()


async def test_datetime_and_timestamp_hold_utc_whatever_the_servers_time_zone(
    mariadb: PrivateMariaDB,
) -> None:
    """The server's time zone is +03:00 here: a TIMESTAMP follows the
    session's zone, so the adapter's sessions run in UTC; a DATETIME holds
    the UTC wall time the adapter converts every timestamp to."""
    mariadb.execute("SET GLOBAL time_zone = '+03:00'")
    url = prepare(mariadb.dsn)
    name = url.rsplit("/", 1)[1]
    client = served(
        url,
        "stamps",
        "CREATE TABLE stamps (id VARCHAR(64) PRIMARY KEY, at_dt DATETIME(6), "
        "at_ts TIMESTAMP(6) NULL)",
    )
    try:
        moment = "2026-01-02T03:04:05.250+02:00"
        operation = {
            "type": "CREATE",
            "model": "stamps",
            "id": "s1",
            "input": {"atDt": moment, "atTs": moment},
        }
        status, body = await client.commit("c_stamp", operation)
        expected = "2026-01-02T01:04:05.250000"
        assert (status, body["rows"][0]["atDt"], body["rows"][0]["atTs"]) == (
            200,
            expected,
            expected,
        ), body
        # Another client, in the server's own zone, sees the same instant.
        stored = mariadb.execute(
            f"SELECT CAST(at_dt AS CHAR), CAST(at_ts AS CHAR), UNIX_TIMESTAMP(at_ts) "
            f"FROM {name}.stamps"
        ).split("\t")
        assert stored[0] == "2026-01-02 01:04:05.250000"
        assert stored[1] == "2026-01-02 04:04:05.250000"  # +03:00 on the wire, the same instant
        assert float(stored[2]) == 1767315845.25
        # What that client writes in its zone is served in UTC.
        mariadb.execute(f"INSERT INTO {name}.stamps VALUES ('s2', NULL, '2026-06-01 12:00:00')")
        row = (await client.ok({"type": "load", "model": "stamps", "id": "s2"}))["row"]
        assert row["atTs"] == "2026-06-01T09:00:00"
        # Epoch milliseconds, and where clauses, in UTC too.
        update = {"type": "UPDATE", "model": "stamps", "id": "s2", "input": {"atDt": 0}}
        assert (await client.commit("c_epoch", update))[1]["rows"][0]["atDt"] == (
            "1970-01-01T00:00:00"
        )
        page = await client.ok(
            {"type": "list", "model": "stamps",
             "query": {"where": [["atTs", ">", "2026-06-01T08:59:59Z"]]}}
        )  # fmt: skip
        assert ids(page) == ["s2"]
    finally:
        await client.close()


async def test_decimal_json_and_boolean_columns(database: str) -> None:
    client = served(
        database,
        "things",
        "CREATE TABLE things (id VARCHAR(64) PRIMARY KEY, price DECIMAL(10, 2), doc JSON, "
        "flag TINYINT(1), yes BOOLEAN, small TINYINT, big BIGINT UNSIGNED, ratio DOUBLE)",
    )
    try:
        values = {
            "price": "12.50",
            "doc": {"k": [1, None], "é": "✓ 🦊"},
            "flag": True,
            "yes": False,
            "small": -128,
            "big": 18446744073709551615,
            "ratio": 0.25,
        }
        operation = {"type": "CREATE", "model": "things", "id": "x1", "input": values}
        status, body = await client.commit("c_things", operation)
        expected = {"id": "x1", **values}
        assert (status, body["rows"]) == (200, [expected]), body
        loaded = (await client.ok({"type": "load", "model": "things", "id": "x1"}))["row"]
        assert loaded == expected
        assert isinstance(loaded["ratio"], float) and isinstance(loaded["flag"], bool)
        assert (await client.events())["events"][0]["data"] == expected
        listed = await client.ok(
            {"type": "list", "model": "things",
             "query": {"where": [["flag", "IS", True], ["yes", False], ["price", ">", 12]]}}
        )  # fmt: skip
        assert ids(listed) == ["x1"]
        assert scalar(database, "SELECT JSON_VALUE(doc, '$.k[0]') FROM things") == "1"
    finally:
        await client.close()


async def test_zero_dates_and_out_of_range_values_are_400s(
    database: str, mariadb_server: PrivateMariaDB
) -> None:
    client = served(
        database,
        "things",
        "CREATE TABLE things (id VARCHAR(64) PRIMARY KEY, small TINYINT, ok TINYINT UNSIGNED, "
        "price DECIMAL(4, 2), at_ts TIMESTAMP NULL, due DATETIME)",
    )
    name = database.rsplit("/", 1)[1]
    # A row another client wrote with a lax sql_mode: a zero date.
    mariadb_server.execute(
        f"SET SESSION sql_mode = ''; INSERT INTO {name}.things (id, due) "
        "VALUES ('zero', '0000-00-00 00:00:00')"
    )

    def change(key: str, **input: Any) -> dict[str, Any]:
        return {
            "type": "commit",
            "correlationId": f"c_{key}",
            "operations": [{"type": "CREATE", "model": "things", "id": key, "input": input}],
        }

    try:
        refused = [
            (change("a", small=128), "small"),  # TINYINT: 8 bits, checked before the database
            (change("b", ok=-1), "ok"),  # UNSIGNED
            (change("c", price=123.4), "price"),  # DECIMAL(4, 2): the database refuses it
            (change("d", atTs="2040-01-01T00:00:00Z"), "atTs"),  # past TIMESTAMP's 2038
            (change("e", due="0000-00-00T00:00:00"), "due"),  # no zero dates from the engine
            ({"type": "list", "model": "things", "query": {"where": [["due", "0000-00-00"]]}}, "due"),
        ]  # fmt: skip
        for request, field in refused:
            status, body = await client(request)
            assert (status, body["error"], body.get("field")) == (
                400,
                "source_value_invalid",
                field,
            ), (request, body)
            assert "123.4" not in body["message"] and "2040" not in body["message"]
        # The zero date is served as it is stored: the row stays readable.
        zero = (await client.ok({"type": "load", "model": "things", "id": "zero"}))["row"]
        assert zero["due"] == "0000-00-00 00:00:00"
        assert ids(await client.ok({"type": "list", "model": "things"})) == ["zero"]
        # Paging past it by that column: the cursor is refused, no row is skipped.
        dated = {"type": "CREATE", "model": "things", "id": "later", "input": {"due": "2026-01-01"}}
        assert (await client.commit("c_dated", dated))[0] == 200
        by_due = {"type": "list", "model": "things", "query": {"orderBy": "due", "limit": 1}}
        first = await client.ok(by_due)
        assert ids(first) == ["zero"]
        status, body = await client(
            {**by_due, "query": {**by_due["query"], "cursor": first["nextCursor"]}}
        )
        assert (status, body["error"]) == (400, "source_cursor_invalid"), body
        assert client.source.healthy
    finally:
        await client.close()


# ------------------------------------------------------------ the server's settings


async def test_a_session_without_strict_mode_stops_the_start_in_one_line(database: str) -> None:
    """The URL's session settings win over the adapter's; one that turns
    strict mode off is refused at start."""
    for lax in (
        database + "?init_command=" + quote("SET SESSION sql_mode = ''"),
        database + "?sql_mode=ANSI_QUOTES",
    ):
        with pytest.raises(ConfigError, match="without a strict sql_mode") as refused:
            SQLSource(lax, MODELS).prepare()
        assert "\n" not in str(refused.value)
    zone = database + "?init_command=" + quote("SET SESSION time_zone = '+01:00'")
    source = SQLSource(zone, MODELS)
    try:
        source.prepare()
        (offset,) = (await source._database.fetch(sa.select(sa.func.timediff(
            sa.func.now(), sa.func.utc_timestamp())), {}))[0]  # fmt: skip
        assert str(offset) == "1:00:00"
    finally:
        await source.aclose()


async def test_a_server_without_strict_mode_is_told_and_still_refused_truncation(
    mariadb: PrivateMariaDB, caplog: pytest.LogCaptureFixture
) -> None:
    mariadb.execute("SET GLOBAL sql_mode = ''")
    url = prepare(mariadb.dsn)
    caplog.set_level(logging.WARNING, logger="connector.sql")
    client = served(
        url, "codes", "CREATE TABLE codes (id VARCHAR(64) PRIMARY KEY, code VARCHAR(3))"
    )
    try:
        client.source.prepare()
        (line,) = [r.getMessage() for r in caplog.records if "sql_mode" in r.getMessage()]
        assert line.startswith("the server's sql_mode is not strict (empty)")
        operation = {"type": "CREATE", "model": "codes", "id": "c1", "input": {"code": "toolong"}}
        status, body = await client.commit("c_long", operation)
        assert (status, body["error"], body["field"]) == (400, "source_value_invalid", "code")
        assert scalar(url, "SELECT COUNT(*) FROM codes") == 0
    finally:
        await client.close()


async def test_the_wal_echo_is_refused_as_on_sqlite(database: str) -> None:
    client = Client(SQLSource(database, MODELS))
    try:
        status, body = await client.commit(
            "c_echo",
            create("t1"),
            intentHash="c" * 64,
            echo={"kind": "postgres-wal", "payload": "p"},
        )
        assert (status, body["error"]) == (409, "source_commit_echo_not_supported")
        assert scalar(database, "SELECT COUNT(*) FROM tasks") == 0
    finally:
        await client.close()


async def test_a_database_that_cannot_work_is_a_configuration_error(
    mariadb_server: PrivateMariaDB,
) -> None:
    password = "pw-right-4c1e"
    user = f"u{time.monotonic_ns() % 10**8}"
    require_password(mariadb_server, user, password)
    lonely = f"l{user}"
    mariadb_server.execute(f"CREATE USER '{lonely}'@'%' IDENTIFIED BY '{password}'")
    base = f"127.0.0.1:{mariadb_server.port}"
    cases = [
        (f"mysql://{user}:wrong-pw-77aa@{base}/test", "refused the login of user"),
        (f"mysql://{user}@{base}/test", "refused the login of user"),
        (f"mysql://nobody_{user}:{password}@{base}/test", "refused the login of user"),
        (f"mysql://{user}:{password}@{base}/no_such_db", "database 'no_such_db' does not exist"),
        (f"mariadb://{lonely}:{password}@{base}/test", f"user '{lonely}' may not use database"),
        (f"mysql://{user}:{password}@{base}/test", "no ablo_idempotency table"),
    ]
    for url, message in cases:
        with pytest.raises(ConfigError, match=message) as raised:
            SQLSource(url, MODELS).prepare()
        text = str(raised.value)
        assert "wrong-pw" not in text and password not in text and "\n" not in text


# ------------------------------------------------------------ outages and stalls


async def test_an_unreachable_server_answers_503_and_recovers(mariadb: PrivateMariaDB) -> None:
    url = prepare(mariadb.dsn)
    source = SQLSource(url, MODELS)
    client = Client(source)
    try:
        await client.commit("c_before", create("t1"))
        await asyncio.to_thread(mariadb.stop)
        status, body = await client({"type": "load", "model": "task", "id": "t1"})
        assert (status, body["error"]) == (503, "source_database_unavailable")
        status, body = await client.commit("c_during", create("t2"))
        assert (status, body["error"]) == (503, "source_database_unavailable")
        assert source.healthy is False and source.last_error
        with pytest.raises(SourceError) as unreachable:
            await source.probe()
        assert unreachable.value.code == "database_unreachable"
        await asyncio.to_thread(mariadb.start)
        await source.probe()
        assert (source.healthy, source.last_error) == (True, None)
        assert (await client.ok({"type": "load", "model": "task", "id": "t1"}))["row"]["id"] == "t1"
        assert (await client.commit("c_during", create("t2")))[0] == 200  # the engine's retry
        assert [e["entityId"] for e in (await client.events())["events"]] == ["t1", "t2"]
    finally:
        await client.close()


async def test_a_killed_connection_is_replaced_within_the_request(database: str) -> None:
    """An administrator (or a failover) ends the connector's sessions: the
    next load and the next commit retry once on a fresh connection."""
    client = Client(SQLSource(database, MODELS, pool_size=2))
    try:
        await client.commit("c_row", create("t1"))
        await asyncio.gather(
            *(client.ok({"type": "load", "model": "task", "id": "t1"}) for _ in range(4))
        )
        name = database.rsplit("/", 1)[1]
        sessions = execute(
            database,
            "SELECT ID FROM information_schema.PROCESSLIST "
            f"WHERE DB = '{name}' AND ID <> CONNECTION_ID()",
        )[0]
        assert sessions
        execute(database, *(f"KILL {session}" for (session,) in sessions))
        for _ in range(3):
            assert (await client.ok({"type": "load", "model": "task", "id": "t1"}))["row"]
        assert (await client.commit("c_after", create("t2")))[0] == 200
        assert client.source.healthy
    finally:
        await client.close()


async def test_a_statement_past_its_timeout_is_cancelled_in_the_database(database: str) -> None:
    client = Client(SQLSource(database, MODELS, statement_timeout=0.5))
    engine = create_database_engine(database)
    try:
        await client.commit("c_t", create("t1"))
        with engine.connect() as other:
            other.exec_driver_sql("LOCK TABLES tasks WRITE")
            started = time.monotonic()
            status, body = await client({"type": "load", "model": "task", "id": "t1"})
            waited = time.monotonic() - started
            other.exec_driver_sql("UNLOCK TABLES")
        assert (status, body["error"]) == (504, "source_database_timeout"), body
        assert 0.4 < waited < 5
        assert (await client.ok({"type": "load", "model": "task", "id": "t1"}))["row"]
    finally:
        await client.close()
        engine.dispose()


async def test_outbox_cursors_follow_commit_order(database: str) -> None:
    """AUTO_INCREMENT draws a cursor at insert time: a commit holding a later
    cursor must not become visible while an earlier one is in flight."""
    client = Client(SQLSource(database, MODELS))
    engine = create_database_engine(database, pool_size=1, max_overflow=0)
    later: asyncio.Task[Any] | None = None

    def waiting_for_the_lock() -> bool:
        rows = execute(
            database,
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE INFO LIKE 'SELECT GET_LOCK%%' AND ID <> CONNECTION_ID()",  # %%: the driver formats
        )[0]
        return bool(rows[0][0])

    try:
        with engine.connect() as other:
            # Another writer's commit is in flight: it holds the outbox lock
            # and has drawn its cursor, but has not committed.
            in_flight = other.begin()
            assert other.exec_driver_sql(f"SELECT GET_LOCK({OUTBOX_LOCK}, 5)").scalar() == 1
            other.exec_driver_sql(
                "INSERT INTO ablo_outbox (id, model, entity_id, type) "
                "VALUES ('other:0', 'task', 'x', 'CREATE')"
            )
            later = asyncio.create_task(client.commit("c_later", create("t1")))
            try:
                await wait_until(waiting_for_the_lock)
                assert not later.done()
                assert (await client.events())["events"] == []
                in_flight.commit()
            finally:
                other.exec_driver_sql(f"DO RELEASE_LOCK({OUTBOX_LOCK})")
        assert (await later)[0] == 200
        events = (await client.events())["events"]
        assert [e["id"] for e in events] == ["other:0", "c_later:0"]
        assert int(events[0]["cursor"]) < int(events[1]["cursor"])
        # The lock was released after the commit: the next one does not wait for it.
        assert (await client.commit("c_next", create("t2")))[0] == 200
    finally:
        if later is not None and not later.done():
            later.cancel()
        await client.close()
        engine.dispose()


async def test_reflection_reports_mysql_types_as_served(database: str) -> None:
    execute(
        database,
        "CREATE TABLE kinds (id INT UNSIGNED PRIMARY KEY, tiny TINYINT, medium MEDIUMINT, "
        "flag TINYINT(1), doc JSON, amount DECIMAL(8, 3), ratio FLOAT)",
    )
    source = SQLSource(database, {"models": {"kind": {"table": "kinds"}}})
    try:
        columns = source.prepare()["kind"].table.c
        assert isinstance(columns.flag.type, sa.Boolean)
        assert isinstance(columns.doc.type, sa.JSON)
        assert columns.ratio.type.python_type is float
        assert columns.amount.type.python_type.__name__ == "Decimal"
        assert (columns.id.info["ablo_integer_bits"], columns.id.info["ablo_integer_unsigned"]) == (
            32,
            True,
        )
        assert columns.tiny.info["ablo_integer_bits"] == 8
        assert columns.medium.info["ablo_integer_bits"] == 24
    finally:
        source.close()


async def test_a_model_in_another_database_is_served_beside_the_ledger(
    database: str, mariadb_server: PrivateMariaDB
) -> None:
    """On MySQL a model's `schema` names another database on the server; the
    ledger and outbox stay in the URL's."""
    other = create_database(mariadb_server)
    other_name = other.rsplit("/", 1)[1]
    execute(other, "CREATE TABLE items (id VARCHAR(64) PRIMARY KEY, name TEXT)")
    models = {"models": {"item": {"table": "items", "schema": other_name}}}
    client = Client(SQLSource(database, models))
    try:
        operation = {"type": "CREATE", "model": "item", "id": "i1", "input": {"name": "elsewhere"}}
        status, body = await client.commit("c_other", operation)
        assert (status, body["rows"]) == (200, [{"id": "i1", "name": "elsewhere"}]), body
        assert scalar(other, "SELECT name FROM items") == "elsewhere"
        assert scalar(database, "SELECT COUNT(*) FROM ablo_outbox") == 1
        loaded = await client.ok({"type": "load", "model": "item", "id": "i1"})
        assert loaded["row"]["name"] == "elsewhere"
    finally:
        await client.close()
        drop_database(mariadb_server, other)
