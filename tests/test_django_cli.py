"""``--django SETTINGS`` on run, dev and check: which project, and every
mistake before serving as one line with exit 78 (the process as an operator
runs it, from the project's folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.django_processes import APP, environment, manage, write_settings

KEY = "sk_test_django_cli_51f0"


def connector(
    folder: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector", *args],
        cwd=folder,
        env={**environment(None), "ABLO_API_KEY": KEY, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line_78(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 78, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"ablo-connector: error: {message}"] or (
        len(lines) == 1 and message in lines[0]
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert KEY not in result.stdout + result.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project that installs the app and serves shop.Task, not yet migrated."""
    write_settings(
        tmp_path, f"sqlite:///{tmp_path / 'app.db'}", ablo={"models": {"task": "shop.Task"}}
    )
    return tmp_path


@pytest.mark.parametrize("command", ["run", "dev", "check"])
@pytest.mark.parametrize(
    ("other", "message"),
    [
        (["--handler", "tests.handlers:TestSource"], "give --handler or --django, not both"),
        (["--database-url", "sqlite:///x.db"], "give --database-url or --django, not both"),
    ],
)
def test_django_and_another_source_are_refused(
    project: Path, command: str, other: list[str], message: str
) -> None:
    result = connector(project, command, "--django", "proj_settings", *other)
    assert result.returncode == 78, result.stderr
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_the_environment_variable_is_named_where_it_came_from(project: Path) -> None:
    result = connector(
        project,
        "run",
        "--handler",
        "tests.handlers:TestSource",
        env={"ABLO_DJANGO": "proj_settings"},
    )
    _one_line_78(result, "give --handler or ABLO_DJANGO from the environment, not both")


def test_no_source_at_all_names_django_among_the_choices(project: Path) -> None:
    _one_line_78(
        connector(project, "run"),
        "say what to serve: --handler package.module:ClassName, --database-url URL, or "
        "--django mysite.settings",
    )


@pytest.mark.parametrize("command", ["run", "dev"])
def test_an_unmigrated_database_says_to_run_migrate(project: Path, command: str) -> None:
    _one_line_78(
        connector(project, command, "--django", "proj_settings"),
        "the Django database 'default' lacks the connector's tables (migration "
        "ablo_connector.0001_initial is not applied): run `python manage.py migrate`",
    )


def test_django_settings_module_alone_names_the_project(project: Path) -> None:
    result = connector(project, "run", env={"DJANGO_SETTINGS_MODULE": "proj_settings"})
    _one_line_78(result, "run `python manage.py migrate`")


def test_a_missing_settings_module(project: Path) -> None:
    _one_line_78(
        connector(project, "run", "--django", "mysite.settings"),
        "cannot import Django settings module 'mysite.settings': no module named 'mysite' "
        "(is it on PYTHONPATH, or run from the folder that holds it?)",
    )


def test_a_settings_module_that_fails_names_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("DEBUG = True\nraise RuntimeError('no secret key')\n")
    result = connector(tmp_path, "run", "--django", "broken")
    _one_line_78(
        result,
        "Django settings module 'broken' failed while importing: RuntimeError: no secret key "
        f"(at {tmp_path / 'broken.py'}, line 2)",
    )
    (tmp_path / "typo.py").write_text("DEBUG = True\nINSTALLED_APPS = [\n")
    result = connector(tmp_path, "run", "--django", "typo")
    assert "Django settings module 'typo' has a syntax error at" in result.stderr
    assert result.returncode == 78


def test_a_project_without_the_app(tmp_path: Path) -> None:
    write_settings(tmp_path, f"sqlite:///{tmp_path / 'app.db'}", apps=("shop",), ablo={})
    _one_line_78(
        connector(tmp_path, "run", "--django", "proj_settings"),
        f"Django settings 'proj_settings': add \"{APP}\" to INSTALLED_APPS, then run "
        "`python manage.py migrate` to create the connector's tables",
    )


def test_an_app_that_is_not_installed(tmp_path: Path) -> None:
    write_settings(tmp_path, f"sqlite:///{tmp_path / 'app.db'}", apps=(APP, "no_such_app"))
    result = connector(tmp_path, "run", "--django", "proj_settings")
    _one_line_78(result, "Django settings 'proj_settings': cannot import no_such_app")


def test_a_mistake_in_ablo_is_one_line(tmp_path: Path) -> None:
    write_settings(tmp_path, f"sqlite:///{tmp_path / 'app.db'}", ablo={"models": {}})
    _one_line_78(
        connector(tmp_path, "run", "--django", "proj_settings"),
        'ABLO["models"] is empty: name at least one model',
    )


def test_check_reports_the_project_and_its_models_once_migrated(project: Path) -> None:
    result = connector(project, "check", "--django", "proj_settings", env={"ABLO_API_KEY": ""})
    assert result.returncode == 78
    assert "FAIL  configuration: the Django database 'default' lacks the connector's tables" in (
        result.stdout
    )
    assert manage(project, "migrate", "--no-input").returncode == 0
    result = connector(project, "check", "--django", "proj_settings", env={"ABLO_API_KEY": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "ok    django: proj_settings (ledger and outbox migrated; models: task (shop.Task))"
        in result.stdout
    )
    assert "all checks passed" in result.stdout


def test_an_unreachable_database_is_exit_69_for_check_and_no_password_is_shown(
    tmp_path: Path,
) -> None:
    from tests.helpers import free_port

    password = "pw-django-7c1e9a"
    url = f"postgresql://app:{password}@127.0.0.1:{free_port()}/app"  # nothing listens
    write_settings(tmp_path, url, ablo={"models": {"task": "shop.Task"}})
    result = connector(tmp_path, "check", "--django", "proj_settings", env={"ABLO_API_KEY": ""})
    assert result.returncode == 69, result.stdout + result.stderr
    assert "FAIL  database: the Django database 'default' did not answer:" in result.stdout
    assert password not in result.stdout + result.stderr


def test_load_project_needs_a_settings_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.adapters.django.project import load_project
    from connector.errors import ConfigError

    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    with pytest.raises(ConfigError, match="say which Django project to serve: --django"):
        load_project(None)


def test_a_project_that_disables_existing_loggers_leaves_the_connectors_on(
    tmp_path: Path,
) -> None:
    from tests.django_processes import python

    write_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'app.db'}",
        ablo={"models": {"task": "shop.Task"}},
        extra="LOGGING = {'version': 1, 'disable_existing_loggers': True}\n",
    )
    code = (
        "import logging, connector.cli\n"
        "from connector.adapters.django.project import setup_project\n"
        "setup_project('proj_settings')\n"
        "print(logging.getLogger('connector.cli').disabled)\n"
    )
    result = python(tmp_path, code, settings=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def _with_replica(folder: Path, default: str, replica: str, **ablo: object) -> None:
    """A project whose ``ABLO["database"]`` may name the DATABASES entry "replica"."""
    from tests.django_processes import django_database

    write_settings(
        folder,
        default,
        ablo={"models": {"task": "shop.Task"}, **ablo},
        extra=f"DATABASES['replica'] = {django_database(replica)!r}\n",
    )


def test_an_unknown_database_alias_is_one_line_naming_the_key(tmp_path: Path) -> None:
    _with_replica(
        tmp_path, f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}", database="rep"
    )
    _one_line_78(
        connector(tmp_path, "run", "--django", "proj_settings"),
        'ABLO["database"]: DATABASES has no entry "rep" (its entries: "default", "replica")',
    )
    _with_replica(
        tmp_path, f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}", database=3
    )
    _one_line_78(
        connector(tmp_path, "run", "--django", "proj_settings"),
        'ABLO["database"] must be the name of a DATABASES entry, e.g. "default", not int',
    )


def test_the_alias_chooses_the_database_checked_and_served(tmp_path: Path) -> None:
    _with_replica(
        tmp_path,
        f"sqlite:///{tmp_path / 'test_default.db'}",
        f"sqlite:///{tmp_path / 'production.db'}",
        database="replica",
    )
    # Only the default database is migrated: the replica, which is served, is not.
    assert manage(tmp_path, "migrate", "--no-input").returncode == 0
    result = connector(tmp_path, "check", "--django", "proj_settings", env={"ABLO_API_KEY": ""})
    assert result.returncode == 78, result.stdout + result.stderr
    assert (
        "the Django database 'replica' lacks the connector's tables (migration "
        "ablo_connector.0001_initial is not applied): run `python manage.py migrate --database "
        "replica`" in result.stdout
    )
    assert manage(tmp_path, "migrate", "--no-input", "--database", "replica").returncode == 0
    result = connector(tmp_path, "check", "--django", "proj_settings", env={"ABLO_API_KEY": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    # verify writes rows: its guard looks at the database served, not at "default".
    result = connector(tmp_path, "verify", "--django", "proj_settings")
    assert result.returncode == 78, result.stdout + result.stderr
    assert "the database 'production.db'" in result.stderr


def test_the_alias_served_unreachable_is_named_and_its_password_never_shown(
    tmp_path: Path,
) -> None:
    from tests.helpers import free_port

    password = "pw-replica-2b7f4d"
    _with_replica(
        tmp_path,
        f"sqlite:///{tmp_path / 'a.db'}",
        f"postgresql://app:{password}@127.0.0.1:{free_port()}/app",
        database="replica",
    )
    result = connector(tmp_path, "check", "--django", "proj_settings", env={"ABLO_API_KEY": ""})
    assert result.returncode == 69, result.stdout + result.stderr
    assert "FAIL  database: the Django database 'replica' did not answer:" in result.stdout
    assert password not in result.stdout + result.stderr


def test_migrate_installs_updates_and_removes_the_capture_and_run_tells_its_drift(
    project: Path,
) -> None:
    from tests.django_processes import python

    refused = connector(project, "migrate", "--django", "proj_settings")
    _one_line_78(refused, "--django takes --capture or --remove-capture only")
    assert manage(project, "migrate", "--no-input", "--run-syncdb").returncode == 0
    result = connector(project, "migrate", "--django", "proj_settings", "--capture")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "Django database 'default': installed the capture of model 'task' (table shop_task)"
    ]
    again = connector(project, "migrate", "--django", "proj_settings", "--capture")
    assert again.stdout.splitlines() == ["Django database 'default': the capture is up to date"]
    # The served fields change: run says the capture no longer matches, migrate repairs it.
    write_settings(
        project,
        f"sqlite:///{project / 'app.db'}",
        ablo={"models": {"task": {"model": "shop.Task", "exclude": ["due_at"]}}},
    )
    code = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(message)s')\n"
        "from connector.cli.sources import django_source\n"
        "django_source('proj_settings', lambda secret: None)\n"
    )
    told = python(project, code, settings=None)
    assert told.returncode == 0, told.stderr
    assert "model 'task' is captured: the database records its writes" in told.stdout
    assert (
        "the capture of model 'task' (table shop_task) no longer matches it (column 'due_at' "
        "no longer served): run `ablo-connector migrate --django SETTINGS --capture`"
    ) in told.stdout
    result = connector(project, "migrate", "--django", "proj_settings", "--capture")
    assert result.stdout.splitlines() == [
        "Django database 'default': updated the capture of model 'task' (table shop_task): "
        "column 'due_at' no longer served"
    ], result.stderr
    result = connector(project, "migrate", "--django", "proj_settings", "--remove-capture")
    assert result.stdout.splitlines() == [
        "Django database 'default': removed the capture of model 'task' (table shop_task)"
    ], result.stderr


def test_capture_on_mariadb_is_refused_in_one_line_and_the_signals_stay(
    tmp_path: Path, mariadb_server: object
) -> None:
    from tests import mariadb

    url = mariadb.create_database(mariadb_server)
    try:
        write_settings(tmp_path, url, ablo={"models": {"task": "shop.Task"}})
        assert manage(tmp_path, "migrate", "--no-input", "--run-syncdb").returncode == 0
        result = connector(tmp_path, "migrate", "--django", "proj_settings", "--capture")
        _one_line_78(
            result,
            "capture of a Django project is available on SQLite and PostgreSQL, not on MariaDB "
            "(the signals record the ORM's writes there)",
        )
    finally:
        mariadb.drop_database(mariadb_server, url)
