"""ablo-connector verify: the examples, the SQL adapter on each database, and handlers
that each break one guarantee, which must fail that check and no other."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from connector import DataSource, ListQuery, RequestContext
from connector.adapters.sql import SQLSource, migrate
from connector.adapters.sql import create_database_engine as database_engine
from connector.verify import CHECKS, Report, plan_for, select_checks, verify_source
from connector.verify.plan import FieldSpec, looks_like_test_database
from connector.verify.report import header_lines
from examples.memory_source import MemorySource
from examples.sqlite_source import SQLiteSource
from tests.broken_sources import BROKEN, CaseSensitiveModels, SlowMissingRow
from tests.conftest import REPO
from tests.helpers import TASKS_DDL, execute, process

ALL = [item.name for item in CHECKS]


async def verify(
    source: DataSource,
    *,
    model: str | None = None,
    fields: Sequence[FieldSpec] = (),
    only: Sequence[str] = (),
    **options: Any,
) -> Report:
    plan = plan_for(source, model, fields)
    return await verify_source(source, plan, select_checks(only), **options)


def statuses(report: Report) -> dict[str, str]:
    return {outcome.name: outcome.status for outcome in report.outcomes}


def command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector", "verify", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **(env or {})},
    )


def tasks_database(path: Path) -> str:
    """A SQLite file with the tests' tasks table, migrated; returns its URL."""
    url = f"sqlite:///{path}"
    sqlite3.connect(path).close()
    execute(url, TASKS_DDL["sqlite"])
    engine = database_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    return url


# ---------------------------------------------------------------- what passes


def test_the_memory_example_passes_every_check_through_the_command() -> None:
    result = command("--handler", "examples.memory_source:MemorySource")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in lines if line.startswith(("PASS", "FAIL", "SKIP"))] == [
        f"PASS  {name}" for name in ALL
    ]
    # It says it writes, and where, before the first check runs.
    notice = next(i for i, line in enumerate(lines) if line.startswith("writes rows:"))
    assert notice < next(i for i, line in enumerate(lines) if line.startswith("PASS"))
    assert "model task" in lines[notice] and "verify-" in lines[notice]
    assert lines[-1].startswith(f"{len(ALL)} passed, 0 failed; deleted the ")


async def test_the_sqlite_example_passes_every_check_and_keeps_none_of_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "example.db"
    report = await verify(SQLiteSource(str(path)))
    assert statuses(report) == dict.fromkeys(ALL, "passed"), [
        (o.name, o.detail) for o in report.failed
    ]
    with sqlite3.connect(path) as db:
        left = db.execute("SELECT id FROM records WHERE id LIKE 'verify-%'").fetchall()
    assert left == [] and report.left_behind == []


@pytest.mark.parametrize("database", ["sqlite", "postgresql", "mariadb"])
def test_the_sql_adapter_passes_every_check_on_each_database(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    extra: list[str] = []
    env: dict[str, str] = {}
    if database == "sqlite":
        url = tasks_database(tmp_path / "verify_test.db")
        extra += ["--database-url", url]
    elif database == "postgresql":
        from tests import postgres

        server = request.getfixturevalue("postgres_server")
        url = postgres.create_database(server)
        request.addfinalizer(lambda: postgres.drop_database(server, url))
        execute(url, TASKS_DDL["postgresql"])
        _migrate(url)
        # A login with a password, as in production: it must show nowhere.
        role, password = f"verifier_{secrets.token_hex(4)}", secrets.token_hex(12)
        postgres.require_password(server, role, password)
        execute(
            url,
            f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}",
        )
        env["ABLO_DATABASE_URL"] = url.replace("postgres@", f"{role}:{password}@")
        extra.append("--allow-any-database")  # the tests' databases are named t_<hex>
    else:
        from tests import mariadb

        server = request.getfixturevalue("mariadb_server")
        url = mariadb.create_database(server)
        request.addfinalizer(lambda: mariadb.drop_database(server, url))
        execute(url, TASKS_DDL["mysql"])
        _migrate(url)
        role, password = f"verifier_{secrets.token_hex(4)}", secrets.token_hex(12)
        mariadb.require_password(server, role, password)
        env["ABLO_DATABASE_URL"] = url.replace("root@", f"{role}:{password}@")
        extra.append("--allow-any-database")
    result = command("--json", *extra, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    if env:
        assert password not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["passed"], report["failed"], report["notRun"]) == (len(ALL), 0, [])
    assert [item["name"] for item in report["checks"]] == ALL
    assert report["model"] == "tasks" and report["leftBehind"] == []
    assert execute(url, "SELECT count(*) FROM tasks")[0] == [(0,)]


def _migrate(url: str) -> None:
    engine = database_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql", "mariadb"])
def test_the_sql_adapter_passes_every_check_with_capture_installed(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With the triggers recording every write (verify's own clean-up too),
    the engine's guarantees hold as without them."""
    from connector.adapters.sql.capture import migrate_capture

    if database == "sqlite":
        url = tasks_database(tmp_path / "verify_test.db")
    elif database == "mariadb":
        from tests import mariadb

        server = request.getfixturevalue("mariadb_server")
        url = mariadb.create_database(server)
        request.addfinalizer(lambda: mariadb.drop_database(server, url))
        execute(url, TASKS_DDL["mysql"])
        _migrate(url)
    else:
        from tests import postgres

        server = request.getfixturevalue("postgres_server")
        url = postgres.create_database(server)
        request.addfinalizer(lambda: postgres.drop_database(server, url))
        execute(url, TASKS_DDL["postgresql"])
        _migrate(url)
    engine = database_engine(url)
    try:
        assert migrate_capture(engine, None) == [
            "installed the capture of model 'tasks' (table tasks)"
        ]
    finally:
        engine.dispose()
    result = command("--database-url", url, "--allow-any-database")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed, 0 failed; deleted the " in result.stdout.splitlines()[-1]


# ---------------------------------------------------------------- what fails


@pytest.mark.parametrize("handler", list(BROKEN), ids=lambda handler: handler.__name__)
async def test_a_handler_that_breaks_one_guarantee_fails_that_check_only(
    handler: type[MemorySource],
) -> None:
    # This one serves a model whose name has capitals; the others serve "task".
    model = "workItems" if handler is CaseSensitiveModels else None
    report = await verify(handler(), model=model)
    assert [outcome.name for outcome in report.failed] == [BROKEN[handler]]
    assert report.not_run == []
    violation = report.failed[0].violation
    assert violation is not None and violation.fix and violation.sent and violation.got


async def test_answers_after_the_deadline_fail_the_deadline_check() -> None:
    report = await verify(SlowMissingRow(), request_timeout=1.0)
    failed = {outcome.name: outcome for outcome in report.failed}
    late = failed.pop("answers-within-deadline")
    assert late.violation is not None
    assert "answered late or 504" in late.violation.got and "within 1 s" in late.violation.expected
    # The other failures are the checks whose own requests were answered late.
    assert "load-missing-is-null" in failed
    assert all("504 " in outcome.detail for outcome in failed.values()), failed


def test_a_failure_exits_1_and_says_what_to_fix_in_json() -> None:
    result = command("--handler", "tests.broken_sources:IgnoresIntent", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # one JSON object on stdout, nothing else
    assert (report["passed"], report["failed"]) == (len(ALL) - 1, 1)
    failed = [item for item in report["checks"] if not item["passed"]]
    assert [item["name"] for item in failed] == ["replay-other-intent-refused"]
    assert "409 idempotency_conflict" in failed[0]["detail"]
    assert "effective_intent_hash" in failed[0]["fix"]
    assert all(set(item) >= {"name", "passed", "detail"} for item in report["checks"])
    assert "writes rows:" in result.stderr


class ReadsOnly(DataSource):
    """Serves load and list only, from nothing."""

    async def load(self, model: str, id: str, ctx: RequestContext) -> None:
        return None

    async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> list[Any]:
        return []


async def test_a_source_that_serves_some_operations_is_checked_on_those() -> None:
    source = ReadsOnly()
    report = await verify(source)
    found = statuses(report)
    assert {name for name, status in found.items() if status == "passed"} == {
        "load-missing-is-null",
        "unknown-model",
        "unknown-field",
        "answers-within-deadline",
    }
    assert report.failed == []
    assert {o.detail for o in report.not_run} == {
        "not served: commit",
        "not served: commit, events",
    }
    lines = header_lines("tests:ReadsOnly", report.plan, report.served)
    assert "does not serve commit, events: the checks that need them are skipped" in lines


async def test_the_rows_written_are_deleted_unless_kept() -> None:
    source = MemorySource()
    only = ["commit-returns-rows", "list-limit"]
    report = await verify(source, only=only)
    assert [o.status for o in report.outcomes] == ["passed", "passed"]
    assert not [key for key in source.rows if key[1].startswith(report.plan.prefix)]
    kept = await verify(source, only=only, keep_rows=True)
    written = sorted(key[1] for key in source.rows if key[1].startswith(kept.plan.prefix))
    assert written == sorted(kept.left_behind) and len(written) == 4


# ---------------------------------------------------------------- the command


def test_only_and_skip_choose_checks_by_name() -> None:
    chosen = command(
        "--handler", "examples.memory_source:MemorySource",
        "--only", "load-missing-is-null,commit-returns-rows", "--skip", "commit-returns-rows",
    )  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr
    assert [line for line in chosen.stdout.splitlines() if line.startswith(("PASS", "FAIL"))] == [
        'PASS  load-missing-is-null: load of an id no row has answers {"row": null}, not an error'
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "lod"], "no check named 'lod'; the checks are: commit-returns-rows,"),
        (["--skip", "x,commit-returns-rows"], "no check named 'x'"),
        (["--field", "title"], "--field 'title' is not NAME=KIND (e.g. title=text)"),
        (["--field", "title=string"], "the kind must be one of text, integer, number,"),
    ],
)
def test_a_usage_mistake_exits_2_naming_it(args: list[str], message: str) -> None:
    from click.testing import CliRunner

    from connector.cli import main

    result = CliRunner().invoke(main, ["verify", "--handler", "examples.memory_source:x", *args])
    assert result.exit_code == 2
    assert message in result.stderr


async def test_ctrl_c_stops_the_checks_and_still_deletes_the_rows() -> None:
    # Each load of a missing row takes 2 s here: the interrupt lands in one.
    args = ["verify", "--handler", "tests.broken_sources:SlowMissingRow"]
    async with process(args) as running:
        await running.wait_for_output("PASS  load-finds-committed-row")
        running.signal(signal.SIGINT)
        assert await running.wait() == 130
        output = running.output()
    assert "interrupted: deleting the rows written" in output
    assert "SKIP  answers-within-deadline" in output and "(interrupted)" in output
    assert re.search(r"\d+ passed, 0 failed, \d+ skipped; deleted the \d+ rows it wrote", output)


def test_a_database_that_does_not_look_like_a_test_one_is_refused(tmp_path: Path) -> None:
    url = tasks_database(tmp_path / "orders.db")
    refused = command("--database-url", url)
    assert refused.returncode == 78
    assert "does not look like a test database" in refused.stderr
    assert "--allow-any-database" in refused.stderr
    assert execute(url, "SELECT count(*) FROM ablo_idempotency")[0] == [(0,)]  # nothing written
    # --allow-any-database writes there anyway: the PostgreSQL run above passes it.


@pytest.mark.parametrize(
    ("name", "test"),
    [("app_test", True), ("verify", True), ("orders-dev.db", True), ("ci", True),
     ("orders", False), ("production.db", False), ("devices", False), ("t_1a2b", False)],
)  # fmt: skip
def test_which_database_names_look_like_test_ones(name: str, test: bool) -> None:
    assert looks_like_test_database(name) is test


async def test_the_sql_adapter_plan_fills_required_columns_and_skips_integer_ids(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'plan_test.db'}"
    sqlite3.connect(tmp_path / "plan_test.db").close()
    execute(
        url,
        "CREATE TABLE counters (id INTEGER PRIMARY KEY, label TEXT, n INTEGER)",
        """CREATE TABLE notes (id TEXT PRIMARY KEY, slug TEXT NOT NULL UNIQUE, body TEXT,
           rank INTEGER, made DATE NOT NULL, pinned BOOLEAN NOT NULL, weight REAL DEFAULT 1,
           summary TEXT)""",
    )
    engine = database_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    source = SQLSource(url)
    try:
        plan = plan_for(source, None, [])
        assert (plan.model, plan.text.name, plan.integer and plan.integer.name) == (
            "notes", "body", "rank",
        )  # fmt: skip
        assert [(spec.name, spec.kind) for spec in plan.others] == [
            ("slug", "text"), ("made", "date"), ("pinned", "boolean"),
        ]  # fmt: skip
        # --field chooses the text column; the integer one is still the kit's choice.
        chosen = plan_for(source, None, [FieldSpec("summary", "text")])
        assert (chosen.text.name, chosen.integer and chosen.integer.name) == ("summary", "rank")
        report = await verify_source(
            source, plan, select_checks(["commit-returns-rows", "list-where-operators"])
        )
        assert [o.status for o in report.outcomes] == ["passed", "passed"], report.failed
    finally:
        await source.aclose()
    with pytest.raises(Exception, match="its id column 'id' is not text"):
        plan_for(SQLSource(url), "counters", [])


def test_the_pytest_helper_reports_each_check_as_a_test(tmp_path: Path) -> None:
    tests = tmp_path / "test_sources.py"
    tests.write_text(
        textwrap.dedent(
            """
            from connector.verify.testing import verify_checks
            test_ignores_intent = verify_checks("tests.broken_sources:IgnoresIntent")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rN", str(tests)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"1 failed, {len(ALL) - 1} passed" in result.stdout
    assert "test_ignores_intent[replay-other-intent-refused]" in result.stdout
    assert "expected: HTTP 409 idempotency_conflict" in result.stdout


def test_the_readme_lists_every_check_in_order() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Prove it: `ablo-connector verify`", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| `([a-z-]+)` \|", section, re.MULTILINE) == ALL
    assert section.rstrip().endswith(
        "Prove it: `ablo-connector verify --handler mymodule:MySource`."
    )
