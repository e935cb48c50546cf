"""The example Django project served by the real CLI: ``ablo-connector dev
--django todo_site.settings`` loads a row the application wrote, and a create
through the engine runs the model's save() and its signal, on the example's
SQLite file and on PostgreSQL (its TODO_DATABASE_URL)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.django_processes import environment
from tests.helpers import execute, free_port, fresh_database, process, wait_for_port


async def _request(*args: str, api: str) -> tuple[int, str]:
    status, answer = 1, ""
    for _ in range(100):  # until the connector has registered with the dev engine
        async with process(["request", *args, "--engine", api]) as client:
            status = await client.wait(30)
            answer = client.output()
        if status == 0:
            break
    return status, answer


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The example's database: its own SQLite file, or TODO_DATABASE_URL."""
    sqlite_file = tmp_path / "django_todo" / "db.sqlite3"
    with fresh_database(request, request.param, sqlite_file) as url:
        yield url


async def test_dev_serves_the_example_project(tmp_path: Path, database: str) -> None:
    folder = tmp_path / "django_todo"
    shutil.copytree(
        REPO / "examples" / "django_todo", folder, ignore=shutil.ignore_patterns("db.sqlite3")
    )
    env = {**environment(None), "PYTHONPATH": f"{folder}:{REPO}"}
    if not database.startswith("sqlite"):
        env["TODO_DATABASE_URL"] = database
    migrated = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    execute(
        database,
        "INSERT INTO todo_task (id, title, slug, done, created_at, updated_at) "
        "VALUES ('t1', 'Hello', 'hello', false, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
    )
    port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    args = [
        "dev",
        "--django",
        "todo_site.settings",
        "--port",
        str(port),
        "--api-port",
        str(api_port),
    ]
    async with process(args, env) as dev:
        await wait_for_port(api_port, 30)
        status, answer = await _request("load", "task", "t1", api=api)
        assert status == 0, answer + dev.output()
        assert '"title": "Hello"' in answer and '"done": false' in answer
        status, answer = await _request(
            "commit", "create", "task", "t2", json.dumps({"title": "Engine Made This"}), api=api
        )
        assert status == 0, answer + dev.output()
    slug, audit = execute(
        database,
        "SELECT slug, done FROM todo_task WHERE id = 't2'",
        "SELECT action FROM todo_auditentry WHERE task_id = 't2'",
    )
    # save() computed the slug, the default filled done, the post_save signal ran.
    assert [tuple(row) for row in slug] == [("engine-made-this", False)]
    assert [tuple(row) for row in audit] == [("created",)]
