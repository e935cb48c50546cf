"""examples/django_todo: migrate creates its tables and the connector's; its
models' rules hold; the connector's check accepts the project."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.adapters.sql.schema import verify_tables
from tests.conftest import REPO
from tests.django_processes import environment

EXAMPLE = REPO / "examples" / "django_todo"


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=folder,
        env={**environment(None), "ABLO_API_KEY": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "django_todo"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("db.sqlite3", "__pycache__"))
    return folder


def test_migrate_creates_the_apps_tables_and_the_connectors(project: Path) -> None:
    result = _run(project, "manage.py", "migrate", "--no-input")
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(f"sqlite:///{project / 'db.sqlite3'}")
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            tables = set(inspector.get_table_names())
            assert {"todo_task", "todo_auditentry", "ablo_idempotency", "ablo_outbox"} <= tables
            columns = {column["name"] for column in inspector.get_columns("todo_task")}
            assert columns == {"id", "title", "slug", "done", "created_at", "updated_at"}
            verify_tables(inspector)
    finally:
        engine.dispose()
    # The committed migrations are the models' (nothing left for makemigrations).
    result = _run(project, "manage.py", "makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_models_rules_hold(project: Path) -> None:
    assert _run(project, "manage.py", "migrate", "--no-input").returncode == 0
    code = """
import json
from django.core.exceptions import ValidationError
from todo.models import AuditEntry, Task
task = Task(title="Write the report")
task.full_clean()
task.save()
task.title = "Write the final report"
task.save()
refused = Task(id="t1", title="   ")
try:
    refused.full_clean()
    outcome = "accepted"
except ValidationError as error:
    outcome = sorted(error.message_dict)
print(json.dumps({
    "id": task.pk, "slug": task.slug, "done": task.done,
    "stamped": task.created_at is not None and task.updated_at >= task.created_at,
    "audit": list(AuditEntry.objects.filter(task_id=task.pk).order_by("id").values_list("action", flat=True)),
    "refused": outcome,
}))
"""
    result = _run(project, "manage.py", "shell", "-c", code)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])  # after Django 5.2's banner
    assert len(facts["id"]) == 32  # the uuid4 default, as hex
    assert facts["slug"] == "write-the-final-report"
    assert facts["done"] is False
    assert facts["stamped"] is True
    assert facts["audit"] == ["created", "updated"]
    assert facts["refused"] == ["title"]


def test_the_applications_own_writes_reach_the_outbox(project: Path) -> None:
    # No connector runs here: the app's ready() alone connects the outbox, as
    # in a web server, the admin or a management command.
    assert _run(project, "manage.py", "migrate", "--no-input").returncode == 0
    code = """
from django.db import transaction
from todo.models import Task
task = Task.objects.create(title="From a view")
task.done = True
task.save()
try:
    with transaction.atomic():
        Task.objects.create(title="Rolled back")
        raise RuntimeError
except RuntimeError:
    pass
Task.objects.get(pk=task.pk).delete()
print(task.pk)
"""
    result = _run(project, "manage.py", "shell", "-c", code)
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip().splitlines()[-1]
    engine = sa.create_engine(f"sqlite:///{project / 'db.sqlite3'}")
    try:
        with engine.connect() as connection:
            events = connection.execute(
                sa.text("SELECT model, entity_id, type FROM ablo_outbox ORDER BY cursor")
            ).all()
    finally:
        engine.dispose()
    assert [tuple(event) for event in events] == [
        ("task", task_id, "CREATE"),
        ("task", task_id, "UPDATE"),
        ("task", task_id, "DELETE"),
    ]


def test_the_connectors_check_accepts_the_project(project: Path) -> None:
    result = _run(project, "-m", "connector", "check", "--django", "todo_site.settings")
    assert result.returncode == 78
    assert "run `python manage.py migrate`" in result.stdout
    assert _run(project, "manage.py", "migrate", "--no-input").returncode == 0
    result = _run(project, "-m", "connector", "check", "--django", "todo_site.settings")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "ok    django: todo_site.settings (ledger and outbox migrated; models: task (todo.Task))"
        in (result.stdout)
    )


def test_verify_passes_on_the_example_and_guards_its_database(project: Path) -> None:
    assert _run(project, "manage.py", "migrate", "--no-input").returncode == 0
    # db.sqlite3 is not a test database's name: verify writes rows, so it refuses.
    refused = _run(project, "-m", "connector", "verify", "--django", "todo_site.settings")
    assert refused.returncode == 78, refused.stdout + refused.stderr
    assert "does not look like a test database" in refused.stdout + refused.stderr
    result = _run(
        project,
        *("-m", "connector", "verify", "--django", "todo_site.settings"),
        *("--allow-any-database", "--json"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["failed"] == 0
    passed = [check["name"] for check in report["checks"] if check["passed"]]
    assert {"commit-returns-rows", "replay-returns-first-answer", "events-cursor-advances"} <= set(
        passed
    ), passed
