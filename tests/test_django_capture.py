"""The Django adapter with capture installed (tests/django_capture_cases.py),
on SQLite and on a private PostgreSQL, each in a pytest process of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_django_source import run_cases


@pytest.mark.timeout(600)
def test_django_capture_on_sqlite(tmp_path: Path) -> None:
    run_cases(str(tmp_path / "django.sqlite3"), "tests/django_capture_cases.py")


@pytest.mark.timeout(600)
def test_django_capture_on_postgresql(postgres_server: Any) -> None:
    from tests import postgres

    url = postgres.create_database(postgres_server)
    try:
        run_cases(url, "tests/django_capture_cases.py")
    finally:
        postgres.drop_database(postgres_server, url)
