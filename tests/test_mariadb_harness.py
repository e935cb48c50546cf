"""The private MariaDB the MySQL tests run against (``tests/mariadb.py``):
what it is, who may log in, and that it stops, starts and cleans up."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import asyncmy
import pytest
from asyncmy.errors import DataError, OperationalError

from tests.mariadb import PrivateMariaDB, create_database, drop_database, running_mariadb

# Client error 2003: "Can't connect to MySQL server" (nothing listens).
CANT_CONNECT = 2003
ACCESS_DENIED = 1045
DATA_TOO_LONG = 1406


async def connect(url: str) -> Any:
    parts = urlsplit(url)
    return await asyncmy.connect(
        host=parts.hostname,
        port=parts.port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/"),
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=10,
    )


async def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    connection = await connect(url)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(sql, args or None)
            return list(await cursor.fetchall())
    finally:
        await connection.ensure_closed()


async def test_the_server_is_mariadb_in_strict_mode_storing_utf8mb4(
    mariadb_server: PrivateMariaDB,
) -> None:
    [(version, sql_mode, charset, database)] = await query(
        mariadb_server.dsn,
        "SELECT VERSION(), @@sql_mode, @@character_set_server, DATABASE()",
    )
    assert "MariaDB" in version
    assert "STRICT_TRANS_TABLES" in sql_mode.split(",")
    assert charset == "utf8mb4"
    assert database == "test"


async def test_a_four_byte_character_round_trips_and_strict_mode_refuses_truncation(
    mariadb_server: PrivateMariaDB,
) -> None:
    url = create_database(mariadb_server)
    try:
        await query(url, "CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR(8) NOT NULL)")
        text = "note 🦊𝄞"  # two characters outside the BMP: four bytes each in UTF-8
        await query(url, "INSERT INTO notes VALUES (1, %s)", text)
        [(stored, octets)] = await query(url, "SELECT body, OCTET_LENGTH(body) FROM notes")
        assert stored == text
        assert octets == len(text.encode())
        with pytest.raises(DataError) as refused:  # a lax sql_mode would cut it short
            await query(url, "INSERT INTO notes VALUES (2, %s)", "nine char")
        assert refused.value.args[0] == DATA_TOO_LONG
    finally:
        drop_database(mariadb_server, url)


async def test_the_password_user_logs_in_only_with_its_password(
    mariadb_server: PrivateMariaDB,
) -> None:
    [(user,)] = await query(mariadb_server.password_dsn, "SELECT CURRENT_USER()")
    assert user.startswith(f"{mariadb_server.password_user}@")
    wrong = mariadb_server.password_dsn.replace(mariadb_server.password, "not-the-password")
    with pytest.raises(OperationalError) as denied:
        await query(wrong, "SELECT 1")
    assert denied.value.args[0] == ACCESS_DENIED
    assert mariadb_server.password not in repr(mariadb_server)


async def test_stop_refuses_logins_and_start_brings_the_same_data_back(
    mariadb: PrivateMariaDB,
) -> None:
    await query(mariadb.dsn, "CREATE TABLE kept (id INT PRIMARY KEY)")
    await query(mariadb.dsn, "INSERT INTO kept VALUES (7)")
    port = mariadb.port

    mariadb.stop()
    assert not mariadb.running
    with pytest.raises(OperationalError) as refused:
        await query(mariadb.dsn, "SELECT 1")
    assert refused.value.args[0] == CANT_CONNECT

    mariadb.start()  # returns once a login works: no retry needed here
    assert mariadb.port == port
    assert await query(mariadb.dsn, "SELECT id FROM kept") == [(7,)]


async def test_the_directory_and_the_server_are_gone_after_a_failing_test() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), running_mariadb() as server:
        directory, dsn = server.directory, server.dsn
        assert (directory / "data").is_dir()
        assert await query(dsn, "SELECT 1") == [(1,)]
        raise RuntimeError("the test failed")
    assert not directory.exists()
    assert not server.running
    with pytest.raises(OperationalError) as refused:
        await query(dsn, "SELECT 1")
    assert refused.value.args[0] == CANT_CONNECT
