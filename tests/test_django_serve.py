"""The example Django project served by the real CLI: ``ablo-connector dev
--django todo_site.settings`` loads a row the application wrote, and a create
through the engine runs the model's save() and its signal.

This needs the Django source (DjangoSource), which comes with its own
branch."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.django_processes import environment
from tests.helpers import free_port, process, wait_for_port


async def _request(*args: str, api: str) -> tuple[int, str]:
    status, answer = 1, ""
    for _ in range(100):  # until the connector has registered with the dev engine
        async with process(["request", *args, "--engine", api]) as client:
            status = await client.wait(30)
            answer = client.output()
        if status == 0:
            break
    return status, answer


async def test_dev_serves_the_example_project(tmp_path: Path) -> None:
    folder = tmp_path / "django_todo"
    shutil.copytree(
        REPO / "examples" / "django_todo", folder, ignore=shutil.ignore_patterns("db.sqlite3")
    )
    env = {**environment(None), "PYTHONPATH": f"{folder}:{REPO}"}
    migrated = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    with sqlite3.connect(folder / "db.sqlite3") as db:
        db.execute(
            "INSERT INTO todo_task (id, title, slug, done, created_at, updated_at) "
            "VALUES ('t1', 'Hello', 'hello', 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
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
    with sqlite3.connect(folder / "db.sqlite3") as db:
        slug = db.execute("SELECT slug, done FROM todo_task WHERE id = 't2'").fetchone()
        audit = db.execute("SELECT action FROM todo_auditentry WHERE task_id = 't2'").fetchall()
    assert slug == ("engine-made-this", 0)  # save() computed it, the default filled done
    assert audit == [("created",)]  # the post_save signal ran
