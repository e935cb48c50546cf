"""The Django app: its migration creates the ledger and the outbox the SQL
adapter's check accepts, on SQLite and PostgreSQL, and removes them again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.adapters.sql import migrate
from connector.adapters.sql.schema import verify_tables
from connector.errors import ConfigError
from tests.django_processes import APP, manage, write_settings
from tests.helpers import fresh_database

TABLES = {"ablo_idempotency", "ablo_outbox"}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request, request.param, tmp_path / "app.db") as url:
        yield url


def _engine(url: str) -> sa.Engine:
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(url.replace("mysql://", "mysql+pymysql://", 1))


def _tables(url: str) -> set[str]:
    engine = _engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) & TABLES
    finally:
        engine.dispose()


def _verify(url: str) -> None:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            verify_tables(sa.inspect(connection))
    finally:
        engine.dispose()


def _ok(result: Any) -> None:
    assert result.returncode == 0, result.stderr


def test_migrate_creates_the_tables_the_sql_adapter_accepts_and_zero_removes_them(
    tmp_path: Path, database_url: str
) -> None:
    write_settings(tmp_path, database_url, apps=(APP,))
    with pytest.raises(ConfigError, match="no ablo_idempotency table"):
        _verify(database_url)
    _ok(manage(tmp_path, "migrate", "--no-input"))
    assert _tables(database_url) == TABLES
    _verify(database_url)  # raises if a table or a column is missing
    shown = manage(tmp_path, "showmigrations", "ablo_connector")
    assert "[X] 0001_initial" in shown.stdout, shown.stderr
    _ok(manage(tmp_path, "migrate", "ablo_connector", "zero", "--no-input"))
    assert _tables(database_url) == set()
    _ok(manage(tmp_path, "migrate", "--no-input"))  # and back again
    _verify(database_url)


def test_migrate_keeps_tables_ablo_connector_migrate_created(
    tmp_path: Path, database_url: str
) -> None:
    engine = _engine(database_url)
    try:
        assert migrate(engine)  # the SQL adapter's migrate made them first
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO ablo_idempotency (client_tx_id, response) VALUES ('tx1', '{}')"
                )
            )
    finally:
        engine.dispose()
    write_settings(tmp_path, database_url, apps=(APP,))
    _ok(manage(tmp_path, "migrate", "--no-input"))
    _verify(database_url)
    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            kept = connection.execute(sa.text("SELECT client_tx_id FROM ablo_idempotency"))
            assert [row[0] for row in kept] == ["tx1"]
            assert migrate(engine) == []  # nothing left for the SQL adapter to do
    finally:
        engine.dispose()


def test_sqlmigrate_prints_the_sql_adapters_statements(tmp_path: Path) -> None:
    from connector.adapters.sql.schema import migration_statements

    write_settings(tmp_path, f"sqlite:///{tmp_path / 'app.db'}", apps=(APP,))
    forwards = manage(tmp_path, "sqlmigrate", "ablo_connector", "0001")
    _ok(forwards)
    for statement in migration_statements("sqlite"):
        assert statement in forwards.stdout
    backwards = manage(tmp_path, "sqlmigrate", "--backwards", "ablo_connector", "0001")
    _ok(backwards)
    assert "DROP TABLE IF EXISTS ablo_outbox" in backwards.stdout
    assert (
        not (tmp_path / "app.db").exists() or _tables(f"sqlite:///{tmp_path / 'app.db'}") == set()
    )


def test_an_older_ledger_is_named_with_how_to_upgrade_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = _engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "CREATE TABLE ablo_idempotency (client_tx_id TEXT PRIMARY KEY, response TEXT)"
                )
            )
    finally:
        engine.dispose()
    write_settings(tmp_path, url, apps=(APP,))
    result = manage(tmp_path, "migrate", "--no-input")
    assert result.returncode != 0
    assert "ablo_idempotency lacks columns ['request_hash', 'expires_at', 'created_at']" in (
        result.stderr
    )
    assert "ablo-connector migrate" in result.stderr
