"""The Django adapter (DjangoSource), on SQLite and on a private PostgreSQL.

Django is configured once per process, so each database runs the cases of
tests/django_cases.py in a pytest process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO


def run_cases(database: str, cases: str = "tests/django_cases.py") -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cases],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "ABLO_DJANGO_DATABASE": database},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


@pytest.mark.timeout(600)
def test_django_source_on_sqlite(tmp_path: Path) -> None:
    run_cases(str(tmp_path / "django.sqlite3"))


@pytest.mark.timeout(600)
def test_django_source_on_postgresql(postgres_server: Any) -> None:
    from tests import postgres

    url = postgres.create_database(postgres_server)
    try:
        run_cases(url)
    finally:
        postgres.drop_database(postgres_server, url)


@pytest.mark.timeout(600)
def test_django_source_on_mariadb(mariadb_server: Any) -> None:
    from tests import mariadb

    url = mariadb.create_database(mariadb_server)
    try:
        run_cases(url)
    finally:
        mariadb.drop_database(mariadb_server, url)
