"""``settings.ABLO``: which models are served, under which names, and every
mistake as one line naming the setting's key. All cases run in one Django
process (the settings are replaced between them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import django
import pytest

from tests.django_processes import write_settings

_SCRIPT = """
import json, sys
import django
django.setup()
from django.conf import settings
from connector.adapters.django.settings import served_models
from connector.errors import ConfigError
answers = []
for case in json.loads(sys.stdin.read()):
    if case == "MISSING":
        del settings.ABLO
    else:
        settings.ABLO = case
    try:
        served = served_models()
    except ConfigError as error:
        answers.append({"error": str(error)})
        continue
    answers.append({"served": {
        name: {
            "model": f"{m.model._meta.app_label}.{m.model.__name__}",
            "id": [m.id.wire, m.id.attname],
            "fields": {wire: f.attname for wire, f in m.fields.items()},
            "wires": [f.wire for f in m.fields.values()],
            "capture": m.capture,
        } for name, m in served.items()
    }})
print(json.dumps(answers))
"""

TASK_FIELDS = {"id": "id", "title": "title", "dueAt": "due_at", "projectId": "project_id"}

SERVED: dict[str, tuple[Any, dict[str, Any]]] = {
    "short form": (
        {"models": {"task": "shop.Task"}},
        {"task": {"model": "shop.Task", "id": ["id", "id"], "fields": TASK_FIELDS}},
    ),
    "long form": (
        {
            "models": {
                "project": {
                    "model": "shop.Project",
                    "exclude": ["internal_notes"],
                    "fields": {"title": "name"},
                    "capture": False,
                }
            }
        },
        {"project": {"model": "shop.Project", "fields": {"id": "id", "title": "name"}, "capture": False}},
    ),
    "a foreign key renamed by its name": (
        {"models": {"task": {"model": "shop.Task", "fields": {"projectRef": "project"}}}},
        {"task": {"fields": {**{k: v for k, v in TASK_FIELDS.items() if k != "projectId"}, "projectRef": "project_id"}}},
    ),
    "a foreign key excluded by its attname": (
        {"models": {"task": {"model": "shop.Task", "exclude": ["project_id", "due_at"]}}},
        {"task": {"fields": {"id": "id", "title": "title"}}},
    ),
}  # fmt: skip

REFUSED: dict[str, tuple[Any, str]] = {
    "ABLO missing": ("MISSING", "the Django settings have no ABLO: name the served models"),
    "ABLO not a dict": ([], "ABLO must be a dict, not a list"),
    "unknown top key": ({"model": {}}, 'ABLO: unknown key "model" (expected "database", "models")'),
    "no models": ({}, 'ABLO has no "models"'),
    "models not a dict": ({"models": ["shop.Task"]}, 'ABLO["models"] must be a dict'),
    "empty models": ({"models": {}}, 'ABLO["models"] is empty: name at least one model'),
    "not app_label.Model": (
        {"models": {"task": "Task"}},
        'ABLO["models"]["task"]: "Task" is not "app_label.ModelName"',
    ),
    "unknown app": (
        {"models": {"task": "nope.Task"}},
        'ABLO["models"]["task"]: no installed app has the label "nope"',
    ),
    "unknown model": (
        {"models": {"task": {"model": "shop.Tsk"}}},
        'ABLO["models"]["task"]["model"]: app "shop" has no model "Tsk" (its models: ',
    ),
    "unknown model key": (
        {"models": {"task": {"model": "shop.Task", "exlude": []}}},
        'ABLO["models"]["task"]: unknown key "exlude" (expected "model", "exclude"',
    ),
    "no model key": ({"models": {"task": {"exclude": []}}}, 'ABLO["models"]["task"] has no "model"'),
    "unknown excluded field": (
        {"models": {"task": {"model": "shop.Task", "exclude": ["titel"]}}},
        'ABLO["models"]["task"]["exclude"]: shop.Task has no field "titel" (its fields: id, title',
    ),
    "unknown renamed field": (
        {"models": {"task": {"model": "shop.Task", "fields": {"name": "nme"}}}},
        'ABLO["models"]["task"]["fields"]: shop.Task has no field "nme"',
    ),
    "a many-to-many field is no column": (
        {"models": {"task": {"model": "shop.Task", "fields": {"watchers": "watchers"}}}},
        'shop.Task has no field "watchers"',
    ),
    "a rename colliding": (
        {"models": {"task": {"model": "shop.Task", "fields": {"title": "due_at"}}}},
        'ABLO["models"]["task"]: fields "title" and "due_at" would both be served as "title"; '
        'rename one differently in "fields"',
    ),
    "two fields with one camelCase": (
        {"models": {"camel": "shop.Camel"}},
        'ABLO["models"]["camel"]: fields "due_at" and "dueAt" would both be served as "dueAt"',
    ),
    "a field renamed twice": (
        {"models": {"task": {"model": "shop.Task", "fields": {"a": "title", "b": "title"}}}},
        'field "title" is renamed twice ("a" and "b")',
    ),
    "renamed and excluded": (
        {"models": {"task": {"model": "shop.Task", "fields": {"a": "title"}, "exclude": ["title"]}}},
        'field "title" is both renamed and excluded',
    ),
    "a model served twice": (
        {"models": {"task": "shop.Task", "todo": "shop.Task"}},
        'ABLO["models"]["todo"]: shop.Task is already served as "task"',
    ),
    "the pk excluded": (
        {"models": {"task": {"model": "shop.Task", "exclude": ["id"]}}},
        'the primary key "id" is served as "id" and cannot be left out',
    ),
    "the pk renamed": (
        {"models": {"task": {"model": "shop.Task", "fields": {"key": "id"}}}},
        'the primary key "id" is always served as "id"',
    ),
    "another field as id": (
        {"models": {"task": {"model": "shop.Task", "fields": {"id": "title"}}}},
        '"id" is the primary key\'s wire name',
    ),
    "capture not a bool": (
        {"models": {"task": {"model": "shop.Task", "capture": "no"}}},
        'ABLO["models"]["task"]["capture"] must be true or false',
    ),
    "exclude not a list": (
        {"models": {"task": {"model": "shop.Task", "exclude": "title"}}},
        'ABLO["models"]["task"]["exclude"] must be a list of field names',
    ),
}  # fmt: skip

if django.VERSION >= (5, 2):  # composite primary keys came with Django 5.2
    REFUSED["a composite primary key"] = (
        {"models": {"line": "shop.Line"}},
        'ABLO["models"]["line"]: shop.Line has no single-field primary key (order, number)',
    )


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    folder: Path = tmp_path_factory.mktemp("django-settings")
    write_settings(folder, f"sqlite:///{folder / 'app.db'}", ablo={"models": {"x": "shop.Task"}})
    cases = {**{k: v[0] for k, v in SERVED.items()}, **{k: v[0] for k, v in REFUSED.items()}}
    import subprocess
    import sys

    from tests.django_processes import environment

    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        input=json.dumps(list(cases.values())),
        cwd=folder,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(zip(cases, json.loads(result.stdout), strict=True))


@pytest.mark.parametrize("case", sorted(SERVED))
def test_served_models(answers: dict[str, dict[str, Any]], case: str) -> None:
    expected = SERVED[case][1]
    assert "error" not in answers[case], answers[case]
    served = answers[case]["served"]
    assert set(served) == set(expected)
    for name, facts in expected.items():
        for key, value in facts.items():
            assert served[name][key] == value, (name, key)
        assert served[name]["wires"] == list(
            served[name]["fields"]
        )  # each field knows its wire name
        assert served[name].get("capture") is facts.get("capture", True)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_each_mistake_is_one_line_naming_the_key(
    answers: dict[str, dict[str, Any]], case: str
) -> None:
    message = answers[case].get("error")
    assert message is not None, answers[case]
    assert REFUSED[case][1] in message
    assert "\n" not in message
