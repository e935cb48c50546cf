"""The SQL adapter from the command line: migrate, check, and run against
PostgreSQL and MariaDB.

A local engine in this process, the connector as a real subprocess, and a
private PostgreSQL or MariaDB: the path a user takes with no Python written.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

from connector.dev.engine import DevEngine
from tests import mariadb
from tests.helpers import TASKS_DDL, Process, execute, free_port, process, wait_for_port
from tests.postgres import create_database, drop_database, require_password

KEY = "sk_test_sql_cli_51c0"
ENV = {"ABLO_API_KEY": KEY}
PASSWORD = "pw-never-shown-7d1e"


def with_password(url: str) -> str:
    # The private server trusts every local user, so any password connects.
    return url.replace("postgres@", f"postgres:{PASSWORD}@")


async def test_migrate_creates_once_and_never_prints_the_password(postgres_server: Any) -> None:
    url = with_password(create_database(postgres_server))
    try:
        async with process(["migrate", "--database-url", url]) as first:
            assert await first.wait(30) == 0, first.output()
            created = first.output()
        async with process(["migrate"], {"ABLO_DATABASE_URL": url}) as second:
            assert await second.wait(30) == 0, second.output()
            again = second.output()
        assert ": created table ablo_idempotency\n" in created
        assert ": created table ablo_outbox\n" in created
        assert "created" not in again and "are up to date" in again
        assert PASSWORD not in created + again and "[redacted]" in created
    finally:
        drop_database(postgres_server, url)


async def test_migrate_and_run_fail_clearly(tmp_path: Path) -> None:
    closed = f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/app"
    async with process(["migrate", "--database-url", closed]) as unreachable:
        assert await unreachable.wait(30) == 69
        assert "cannot reach" in unreachable.output()
        assert PASSWORD not in unreachable.output()
    db = tmp_path / "plain.db"
    execute(f"sqlite:///{db}", TASKS_DDL["sqlite"])
    async with process(["run", "--database-url", f"sqlite:///{db}"], ENV) as unprepared:
        assert await unprepared.wait(30) == 78
        assert "run `ablo-connector migrate --database-url ...` once" in unprepared.output()


async def test_check_reports_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    execute(url, TASKS_DDL["sqlite"])
    async with process(["migrate", "--database-url", url]) as migrate:
        assert await migrate.wait(30) == 0
    async with (
        DevEngine(KEY) as engine,
        process(["check", "--base-url", engine.base_url, "--database-url", url], ENV) as check,
    ):
        assert await check.wait(30) == 0, check.output()
        assert "ok    database:" in check.output() and "models: tasks" in check.output()
        # Each model with its table, id column and fields (and their columns where renamed).
        assert (
            "      model tasks: table tasks, id column id, fields title, done, priority, "
            "dueAt (due_at), archivedAt (archived_at), estimate\n"
        ) in check.output()
    execute(
        url, "CREATE TABLE orders (order_key TEXT PRIMARY KEY, amount_cents INTEGER, note TEXT)"
    )
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.Order]\ntable = "orders"\nexclude = ["note"]\n'
        '[models.Order.fields]\nid = "order_key"\ntotal = "amount_cents"\n'
    )
    async with process(
        ["check", "--database-url", url, "--models", str(models)], {"ABLO_API_KEY": ""}
    ) as check:
        assert await check.wait(30) == 0, check.output()
        assert (
            "      model Order: table orders, id column order_key, fields total (amount_cents)\n"
        ) in check.output()


async def test_run_serves_postgres_end_to_end_and_survives_a_restart(postgres_server: Any, tmp_path: Path) -> None:  # fmt: skip
    url = with_password(create_database(postgres_server))
    execute(url, TASKS_DDL["postgresql"])
    models = tmp_path / "models.toml"
    models.write_text('[models.task]\ntable = "tasks"\n')
    try:
        async with process(["migrate", "--database-url", url]) as migrate:
            assert await migrate.wait(30) == 0
        async with DevEngine(KEY) as engine:
            args = [
                "run", "--base-url", engine.base_url, "--database-url", url,
                "--models", str(models), "--log-level", "debug",
            ]  # fmt: skip
            connector = await Process(args, ENV).start()
            try:
                await engine.wait_attached(20)
                commit = {
                    "type": "commit",
                    "correlationId": "e2e_1",
                    "operations": [
                        {"type": "CREATE", "model": "task", "id": "t1",
                         "input": {"title": "Ship", "priority": 2}, "transactionId": "op1"},
                        {"type": "CREATE", "model": "task", "id": "t2", "input": {"title": "Test"}},
                    ],
                }  # fmt: skip
                created = await engine.request(commit)
                assert created.status == 200, created.body
                rows = created.json()["rows"]
                assert [r["id"] for r in rows] == ["t1", "t2"] and rows[0]["priority"] == 2

                loaded = await engine.request({"type": "load", "model": "task", "id": "t1"})
                assert loaded.json()["row"]["title"] == "Ship"
                listed = await engine.request(
                    {"type": "list", "model": "task",
                     "query": {"where": [["title", "ILIKE", "%s%"]], "orderBy": "title", "limit": 1}}
                )  # fmt: skip
                first_page = listed.json()
                assert [r["id"] for r in first_page["rows"]] == ["t1"]
                second = await engine.request(
                    {"type": "list", "model": "task",
                     "query": {"where": [["title", "ILIKE", "%s%"]], "orderBy": "title", "limit": 1,
                               "cursor": first_page["nextCursor"]}}
                )  # fmt: skip
                assert [r["id"] for r in second.json()["rows"]] == ["t2"]
                for op in ("UPDATE", "ARCHIVE", "DELETE"):
                    answer = await engine.request(
                        {"type": "commit", "correlationId": f"e2e_{op}",
                         "operations": [{"type": op, "model": "task", "id": "t2",
                                         "input": {"title": "Tested"} if op == "UPDATE" else {}}]}
                    )  # fmt: skip
                    assert answer.status == 200, (op, answer.body)
                events = (await engine.request({"type": "events", "limit": 10})).json()
                assert [e["type"] for e in events["events"]] == [
                    "CREATE", "CREATE", "UPDATE", "ARCHIVE", "DELETE",
                ]  # fmt: skip
                assert events["events"][0]["transactionId"] == "op1"

                # A connector killed mid-life and restarted replays from the ledger.
                connector.signal(signal.SIGKILL)
                await connector.wait(10)
                output = connector.output()
                connector = await Process(args, ENV).start()
                await engine.wait_attached(20)
                replayed = await engine.request(commit)
                assert (replayed.status, replayed.json()["rows"]) == (200, rows)
                count = execute(url, "SELECT COUNT(*) FROM ablo_outbox")[0][0][0]
                assert count == 5
            finally:
                connector.signal(signal.SIGTERM)
                assert await connector.wait(20) == 0
                output += connector.output()
                await connector.stop()
        assert "serving 1 model(s)" in output
        assert PASSWORD not in output and KEY not in output
        assert "prefer ABLO_DATABASE_URL" in output  # the flag is visible in ps
    finally:
        drop_database(postgres_server, url)


async def test_dev_serves_a_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    execute(url, TASKS_DDL["sqlite"], "INSERT INTO tasks (id, title) VALUES ('t1', 'Hello')")
    async with process(["migrate", "--database-url", url]) as migrate:
        assert await migrate.wait(30) == 0
    port, api_port = free_port(), free_port()
    async with process(
        ["dev", "--database-url", url, "--port", str(port), "--api-port", str(api_port)]
    ) as dev:
        await wait_for_port(api_port, 20)
        request = ["request", "load", "tasks", "t1", "--engine", f"http://127.0.0.1:{api_port}"]
        for _ in range(100):
            async with process(request) as client:
                status = await client.wait(30)
                answer = client.output()
            if status == 0:
                break
        assert status == 0, answer + dev.output()
        assert '"title": "Hello"' in answer


async def _run_and_migrate_refuse(url: str, message: str) -> list[str]:
    """run and migrate classify alike: a refused login or a database closed to
    the user is a mistake (78, ``message`` in one line), not an outage (69,
    "cannot reach"). Returns what each printed."""
    said = []
    for command in ("run", "migrate"):
        async with process([command, "--database-url", url], ENV) as connector:
            assert await connector.wait(30) == 78, (command, connector.output())
            output = connector.output()
        assert message in output and "Traceback" not in output, (command, output)
        assert PASSWORD not in output and "cannot reach" not in output
        said.append(output)
    return said


async def test_run_refuses_a_database_that_cannot_work(
    postgres_server: Any, tmp_path: Path
) -> None:
    role = f"cli_{uuid.uuid4().hex[:8]}"
    require_password(postgres_server, role, "pw-right-0a9b")
    wrong = f"postgresql://{role}:{PASSWORD}@127.0.0.1:{postgres_server.port}/postgres"
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    unknown = f"postgresql://nobody_{role}@127.0.0.1:{postgres_server.port}/postgres"
    closed_database = create_database(postgres_server)
    execute(
        closed_database,
        f"REVOKE CONNECT ON DATABASE {closed_database.rsplit('/', 1)[1]} FROM PUBLIC",
    )
    closed = f"postgresql://{role}:pw-right-0a9b@127.0.0.1:{postgres_server.port}/"
    closed += closed_database.rsplit("/", 1)[1]
    cases = [
        (wrong, "refused the login"),
        (unknown, "has no user"),
        (missing, "does not exist"),
        (closed, f"user {role!r} may not connect to database"),
    ]
    try:
        for url, message in cases:
            await _run_and_migrate_refuse(url, message)
    finally:
        drop_database(postgres_server, closed_database)
    assert not (tmp_path / "missing.db").exists()


async def test_a_migrate_that_succeeds_means_run_accepts_the_database(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    url = f"sqlite:///{path}"
    execute(
        url,
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, title TEXT)",
        "CREATE TABLE orders (order_key TEXT PRIMARY KEY, total INTEGER)",  # no id column
    )
    async with process(["migrate", "--database-url", url]) as cli:
        assert await cli.wait(30) == 0, cli.output()
        assert f"{url}: run will serve tasks" in cli.output()
    # Without a map, a table with no id column is left out (with a warning), not fatal.
    async with process(["check", "--database-url", url], {"ABLO_API_KEY": ""}) as cli:
        assert await cli.wait(30) == 0, cli.output()
        assert (
            "models: tasks)" in cli.output()
            and "not serving table(s) without a unique id column: orders (no id column)"
            in (cli.output())
        )
    # A map that run would refuse fails migrate the same way, with the same line.
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.order]\ntable = "orders"\n')
    async with process(["migrate", "--database-url", url, "--models", str(bad)]) as cli:
        assert await cli.wait(30) == 78
        assert "run would refuse this database: model 'order'" in cli.output()
        assert "no column for field 'id'" in cli.output()
    good = tmp_path / "good.toml"
    good.write_text('[models.order]\ntable = "orders"\n[models.order.fields]\nid = "order_key"\n')
    async with process(["migrate", "--database-url", url, "--models", str(good)]) as cli:
        assert await cli.wait(30) == 0, cli.output()
        assert "run will serve order" in cli.output()
    # On SQLite a schema is an attached database: a map naming one is a mistake, not an outage.
    schema = tmp_path / "schema.toml"
    schema.write_text('[models.task]\ntable = "tasks"\nschema = "app"\n')
    async with process(
        ["check", "--database-url", url, "--models", str(schema)], {"ABLO_API_KEY": ""}
    ) as cli:
        assert await cli.wait(30) == 78
        assert "SQLite has no schema 'app'" in cli.output()


async def test_migrate_prints_the_ddl_and_the_grants_of_a_least_privilege_user(
    postgres_server: Any, tmp_path: Path
) -> None:
    """The connector's own user (no CREATE) cannot run migrate the first time:
    migrate says what to do, prints the DDL for the owner, and prints the
    GRANTs that user needs, connecting as that very user."""
    import psycopg

    from connector.adapters.sql import SQLSource
    from tests.test_sql_adapter import Client

    url = create_database(postgres_server)
    role = f"lp_{uuid.uuid4().hex[:8]}"
    as_role = url.replace("postgres@", f"{role}@")
    execute(
        url,
        TASKS_DDL["postgresql"],
        # An INSERT calls nextval() for n (USAGE on its sequence), never for m (identity).
        "CREATE TABLE counters (id TEXT PRIMARY KEY, n SERIAL, m BIGINT GENERATED BY DEFAULT AS IDENTITY)",
        "CREATE SCHEMA app",
        "CREATE TABLE app.items (id TEXT PRIMARY KEY, name TEXT)",
        f"CREATE ROLE {role} LOGIN",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    )
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.task]\ntable = "tasks"\n[models.counter]\ntable = "counters"\n'
        '[models.item]\ntable = "items"\nschema = "app"\n'
    )

    def as_owner(script: str) -> None:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(script.encode())

    try:
        async with process(["migrate", "--database-url", as_role]) as cli:
            assert await cli.wait(30) == 78, cli.output()
            assert "may not create the ledger and outbox" in cli.output()
            assert "--print-sql" in cli.output() and "--print-grants ROLE" in cli.output()
        async with process(["migrate", "--database-url", as_role, "--print-sql"]) as cli:
            assert await cli.wait(30) == 0, cli.output()
            as_owner(cli.output())
        grants = [
            "migrate",
            "--database-url",
            as_role,
            "--models",
            str(models),
            "--print-grants",
            role,
        ]
        async with process(grants) as cli:
            assert await cli.wait(30) == 0, cli.output()
            printed = cli.output()
        statements = [line for line in printed.splitlines() if line.startswith("GRANT")]
        assert f"GRANT USAGE ON SCHEMA app TO {role};" in statements
        assert f"GRANT SELECT, INSERT, UPDATE, DELETE ON app.items TO {role};" in statements
        assert f"GRANT USAGE ON SEQUENCE public.counters_n_seq TO {role};" in statements
        assert f"GRANT USAGE ON SEQUENCE public.ablo_outbox_cursor_seq TO {role};" in statements
        assert not any(word in printed for word in ("ALL", "CREATE ", "OWNER", "counters_m_seq"))
        as_owner(printed)
        async with process(["migrate", "--database-url", as_role, "--models", str(models)]) as cli:
            assert await cli.wait(30) == 0, cli.output()  # nothing to create: it checks
            assert "run will serve counter, item, task" in cli.output()
        # Exactly enough to serve every model, commits, events and the WAL echo included.
        client = Client(SQLSource(as_role, {"models": {
            "task": {"table": "tasks"}, "counter": {"table": "counters"},
            "item": {"table": "items", "schema": "app"}}}))  # fmt: skip
        try:
            echo = {"kind": "postgres-wal", "payload": "granted"}
            status, body = await client.commit(
                "c_grants",
                {"type": "CREATE", "model": "task", "id": "t1", "input": {"title": "T"}},
                {"type": "CREATE", "model": "counter", "id": "c1", "input": {}},
                {"type": "CREATE", "model": "item", "id": "i1", "input": {"name": "I"}},
                {"type": "DELETE", "model": "item", "id": "i1"},
                intentHash="e" * 64,
                echo=echo,
            )
            assert status == 200, body
            assert body["rows"][1]["n"] == 1 and body["rows"][1]["m"] == 1
            events = await client.events()
            assert len(events["events"]) == 4
            assert (await client.events(events["nextCursor"]))["events"] == []
        finally:
            await client.close()
    finally:
        drop_database(postgres_server, url)
        execute(postgres_server.dsn, f"DROP ROLE IF EXISTS {role}")


async def test_migrate_prints_no_grants_for_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    execute(url, TASKS_DDL["sqlite"])
    async with process(["migrate", "--database-url", url, "--print-grants", "app"]) as cli:
        assert await cli.wait(30) == 0, cli.output()
        assert "SQLite has no users and no GRANTs" in cli.output()
        assert "GRANT " not in cli.output()
    async with process(["migrate", "--database-url", url, "--print-sql"]) as cli:
        assert await cli.wait(30) == 0, cli.output()
        assert "CREATE TABLE IF NOT EXISTS ablo_outbox" in cli.output()
    assert execute(url, "SELECT name FROM sqlite_master WHERE name LIKE 'ablo_%'")[0] == []


def _mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity (``128Mi``, ``1Gi``) in MiB."""
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


async def test_the_kubernetes_memory_request_covers_the_sql_adapter_on_postgres(
    postgres_server: Any,
) -> None:
    """The manifests request memory for the process they run, the SQL adapter
    on PostgreSQL: its peak RSS under load, plus the commit answers it may
    keep (--replay-memory, 16 MiB), must fit in the request, and the limit
    above it. The request was 64 Mi while the process held 70 to 80 MiB."""
    import asyncio

    import yaml

    manifest = Path(__file__).resolve().parents[1] / "deploy/kubernetes/base/deployment.yaml"
    (container,) = yaml.safe_load(manifest.read_text())["spec"]["template"]["spec"]["containers"]
    request = _mebibytes(container["resources"]["requests"]["memory"])
    limit = _mebibytes(container["resources"]["limits"]["memory"])
    url = create_database(postgres_server)
    execute(
        url,
        TASKS_DDL["postgresql"],
        "INSERT INTO tasks (id, title, priority) "
        "SELECT 't' || n, 'Task number ' || n, mod(n, 5) FROM generate_series(1, 300) AS n",
    )
    try:
        async with process(["migrate", "--database-url", url]) as migrate:
            assert await migrate.wait(30) == 0
        async with DevEngine(KEY) as engine:
            args = ["run", "--base-url", engine.base_url, "--database-url", url]
            connector = await Process(args, ENV).start()
            try:
                await engine.wait_attached(20)
                bodies: list[dict[str, Any]] = []
                for n in range(300):
                    bodies.append({"type": "load", "model": "tasks", "id": f"t{n + 1}"})
                    bodies.append({"type": "list", "model": "tasks", "query": {
                        "limit": 100, "where": [["priority", "!=", n % 5]]}})  # fmt: skip
                    bodies.append({"type": "commit", "correlationId": f"mem_{n}", "operations": [
                        {"type": "UPDATE", "model": "tasks", "id": f"t{n + 1}",
                         "input": {"title": f"Task {n} again"}}]})  # fmt: skip
                for start in range(0, len(bodies), 64):  # 64 in flight, as --max-in-flight
                    answers = await asyncio.gather(
                        *(engine.request(body) for body in bodies[start : start + 64])
                    )
                    assert {answer.status for answer in answers} == {200}
                status = Path(f"/proc/{connector.pid}/status").read_text()
                peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024  # fmt: skip
            finally:
                connector.signal(signal.SIGTERM)
                assert await connector.wait(20) == 0
                await connector.stop()
    finally:
        drop_database(postgres_server, url)
    replay_memory = 16
    assert peak + replay_memory <= request < limit, (peak, request, limit)


# ------------------------------------------------------------ MariaDB


def _as_user(url: str, user: str, password: str) -> str:
    """``url`` (root's, on a private MariaDB) as another user of the same database."""
    return url.replace("mysql://root@", f"mysql://{user}:{password}@")


async def test_mariadb_migrate_run_and_a_restart_end_to_end(
    mariadb_server: Any, tmp_path: Path
) -> None:
    """migrate creates the tables once and ends with run's check; run serves
    every operation; a connector killed mid-life replays from the ledger."""
    root = mariadb.create_database(mariadb_server)
    user, password = f"e2e_{uuid.uuid4().hex[:8]}", PASSWORD
    mariadb.require_password(mariadb_server, user, password)
    url = _as_user(root, user, password)
    execute(root, TASKS_DDL["mysql"])
    models = tmp_path / "models.toml"
    models.write_text('[models.task]\ntable = "tasks"\n')
    env = {**ENV, "ABLO_DATABASE_URL": url}
    try:
        async with process(["migrate"], {"ABLO_DATABASE_URL": url}) as first:
            assert await first.wait(30) == 0, first.output()
            created = first.output()
        async with process(["migrate"], {"ABLO_DATABASE_URL": url}) as second:
            assert await second.wait(30) == 0, second.output()
            again = second.output()
        assert ": created table ablo_idempotency\n" in created
        assert ": created table ablo_outbox\n" in created and ": run will serve tasks\n" in created
        assert "created" not in again and "are up to date" in again
        assert password not in created + again and "[redacted]" in created
        async with DevEngine(KEY) as engine:
            args = ["run", "--base-url", engine.base_url, "--models", str(models)]
            connector = await Process(args, env).start()
            try:
                await engine.wait_attached(20)
                commit = {
                    "type": "commit",
                    "correlationId": "e2e_1",
                    "operations": [
                        {"type": "CREATE", "model": "task", "id": "t1",
                         "input": {"title": "Ship 🚢", "priority": 2}},
                        {"type": "CREATE", "model": "task", "id": "t2", "input": {"title": "Test"}},
                    ],
                }  # fmt: skip
                created_rows = await engine.request(commit)
                assert created_rows.status == 200, created_rows.body
                rows = created_rows.json()["rows"]
                assert [r["title"] for r in rows] == ["Ship 🚢", "Test"]
                listed = await engine.request(
                    {"type": "list", "model": "task",
                     "query": {"where": [["title", "ILIKE", "%S%"]], "orderBy": "title", "limit": 1}}
                )  # fmt: skip
                page = listed.json()
                assert [r["id"] for r in page["rows"]] == ["t1"]
                second_page = await engine.request(
                    {"type": "list", "model": "task",
                     "query": {"where": [["title", "ILIKE", "%S%"]], "orderBy": "title", "limit": 1,
                               "cursor": page["nextCursor"]}}
                )  # fmt: skip
                assert [r["id"] for r in second_page.json()["rows"]] == ["t2"]
                archived = await engine.request(
                    {"type": "commit", "correlationId": "e2e_2",
                     "operations": [{"type": "ARCHIVE", "model": "task", "id": "t2"}]}
                )  # fmt: skip
                assert archived.status == 200 and archived.json()["rows"][0]["archivedAt"]
                events = (await engine.request({"type": "events"})).json()["events"]
                assert [e["type"] for e in events] == ["CREATE", "CREATE", "ARCHIVE"]

                connector.signal(signal.SIGKILL)
                await connector.wait(10)
                output = connector.output()
                connector = await Process(args, env).start()
                await engine.wait_attached(20)
                replayed = await engine.request(commit)
                assert (replayed.status, replayed.json()["rows"]) == (200, rows)
                assert execute(root, "SELECT COUNT(*) FROM ablo_outbox")[0][0][0] == 3
            finally:
                connector.signal(signal.SIGTERM)
                assert await connector.wait(20) == 0
                output += connector.output()
                await connector.stop()
        assert "serving 1 model(s) from mysql+asyncmy://" in output
        assert password not in output and KEY not in output
        check = ["check", "--models", str(models)]
        async with process(check, {"ABLO_API_KEY": "", "ABLO_DATABASE_URL": url}) as cli:
            assert await cli.wait(30) == 0, cli.output()
            shown = cli.output()
        assert "ok    database: mysql+asyncmy://" in shown and "models: task)" in shown
        assert "      model task: table tasks, id column id, fields title, done, priority" in shown
        assert password not in shown
    finally:
        mariadb.drop_database(mariadb_server, root)
        mariadb_server.execute(f"DROP USER IF EXISTS '{user}'@'%'")


async def test_run_and_migrate_refuse_a_mariadb_that_cannot_work(mariadb_server: Any) -> None:
    user, scoped = (f"cli_{uuid.uuid4().hex[:8]}" for _ in range(2))
    mariadb.require_password(mariadb_server, user, "pw-right-5e2f")
    base = f"127.0.0.1:{mariadb_server.port}"
    cases = [
        (f"mysql://{user}:{PASSWORD}@{base}/test", "refused the login of user"),
        (
            f"mariadb://{user}:pw-right-5e2f@{base}/no_such_db",
            "database 'no_such_db' does not exist",
        ),
    ]
    try:
        for url, message in cases:
            await _run_and_migrate_refuse(url, message)
        # A user granted one database only, naming another: the server cannot
        # say whether it exists, and neither command claims a missing privilege.
        mariadb_server.execute(
            f"CREATE USER '{scoped}'@'%' IDENTIFIED BY 'pw-right-5e2f';"
            f"GRANT ALL ON `other_db`.* TO '{scoped}'@'%'"
        )
        denied = f"mariadb://{scoped}:pw-right-5e2f@{base}/no_such_db"
        said = await _run_and_migrate_refuse(
            denied, f"user '{scoped}' may not use database 'no_such_db'"
        )
        assert not any("may not create" in output for output in said), said
        # A database without the ledger and outbox: run says to migrate first.
        bare = mariadb.create_database(mariadb_server)
        try:
            execute(bare, TASKS_DDL["mysql"])
            async with process(["run", "--database-url", bare], ENV) as connector:
                assert await connector.wait(30) == 78, connector.output()
                assert "run `ablo-connector migrate --database-url ...` once" in connector.output()
        finally:
            mariadb.drop_database(mariadb_server, bare)
        closed = f"mysql://app:{PASSWORD}@127.0.0.1:{free_port()}/app"
        async with process(["migrate", "--database-url", closed]) as unreachable:
            assert await unreachable.wait(30) == 69
            assert "cannot reach" in unreachable.output()
            assert PASSWORD not in unreachable.output()
    finally:
        mariadb_server.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        mariadb_server.execute(f"DROP USER IF EXISTS '{scoped}'@'%'")


async def test_dev_serves_an_existing_mariadb_database_after_migrate(mariadb_server: Any) -> None:
    url = mariadb.create_database(mariadb_server).replace("mysql://", "mariadb://")
    execute(url, TASKS_DDL["mysql"], "INSERT INTO tasks (id, title) VALUES ('t1', 'Hello')")
    try:
        async with process(["migrate", "--database-url", url]) as migrate:
            assert await migrate.wait(30) == 0, migrate.output()
        port, api_port = free_port(), free_port()
        async with process(
            ["dev", "--database-url", url, "--port", str(port), "--api-port", str(api_port)]
        ) as dev:
            await wait_for_port(api_port, 20)
            request = ["request", "load", "tasks", "t1", "--engine", f"http://127.0.0.1:{api_port}"]
            for _ in range(100):
                async with process(request) as client:
                    status = await client.wait(30)
                    answer = client.output()
                if status == 0:
                    break
            assert status == 0, answer + dev.output()
            assert '"title": "Hello"' in answer and '"done": false' in answer
            # What to try names a served model and the engine this dev runs.
            await dev.wait_for_output(
                f"Try: ablo-connector request list tasks --engine http://127.0.0.1:{api_port}"
            )
    finally:
        mariadb.drop_database(mariadb_server, url)


async def test_migrate_prints_the_ddl_and_the_grants_of_a_least_privilege_mysql_user(
    mariadb_server: Any, tmp_path: Path
) -> None:
    """A user that may not create tables cannot run migrate the first time:
    migrate says so, prints the DDL for the owner and the GRANTs the user
    needs; with exactly those, run serves every operation."""
    from connector.adapters.sql import SQLSource
    from tests.test_sql_adapter import Client

    root = mariadb.create_database(mariadb_server)
    user, password = f"lp_{uuid.uuid4().hex[:8]}", "pw-least-8b3d"
    as_user = _as_user(root, user, password)
    as_user_env = {"ABLO_DATABASE_URL": as_user}  # a password on the command line draws a warning
    name = root.rsplit("/", 1)[1]
    execute(root, TASKS_DDL["mysql"])
    mariadb_server.execute(  # as root, in the mariadb client ('%' is no placeholder there)
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}';"
        # Enough to connect to the database and read the catalog; no CREATE.
        f"GRANT SELECT ON `{name}`.tasks TO '{user}'@'%';"
    )

    def statements(printed: str) -> list[str]:
        text = "\n".join(line for line in printed.splitlines() if not line.startswith("--"))
        return [part.strip() for part in text.split(";") if part.strip()]

    try:
        async with process(["migrate"], as_user_env) as cli:
            assert await cli.wait(30) == 78, cli.output()
            assert "may not create the ledger and outbox" in cli.output()
        async with process(["migrate", "--print-sql"], as_user_env) as cli:
            assert await cli.wait(30) == 0, cli.output()
            assert "in the database the connector's URL names" in cli.output()
            execute(root, *statements(cli.output()))
        # Without the GRANTs, run stops in one line, as for a refused login.
        async with process(["run"], {**ENV, **as_user_env}) as cli:
            assert await cli.wait(30) == 78, cli.output()
            assert f"user '{user}' lacks a privilege the connector needs: " in cli.output()
        async with process(["migrate", "--print-grants", user], as_user_env) as cli:
            assert await cli.wait(30) == 0, cli.output()
            printed = cli.output()
        grants = statements(printed)
        assert grants == [
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name}.tasks TO '{user}'@'%'",
            # DELETE on both: retention prunes them.
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name}.ablo_idempotency TO '{user}'@'%'",
            f"GRANT SELECT, INSERT, DELETE ON {name}.ablo_outbox TO '{user}'@'%'",
        ], printed
        mariadb_server.execute(";".join(grants))
        async with process(["migrate"], as_user_env) as cli:
            assert await cli.wait(30) == 0, cli.output()  # nothing to create: it checks
            assert "run will serve tasks" in cli.output()
        client = Client(SQLSource(as_user, {"models": {"task": {"table": "tasks"}}}))
        try:
            status, body = await client.commit(
                "c_grants",
                {"type": "CREATE", "model": "task", "id": "t1", "input": {"title": "T"}},
                {"type": "UPDATE", "model": "task", "id": "t1", "input": {"done": True}},
                {"type": "DELETE", "model": "task", "id": "t1"},
            )
            assert status == 200, body
            assert (
                await client.commit("c_grants", {"type": "DELETE", "model": "task", "id": "t1"})
            )[0] == 409
            events = await client.events()
            assert len(events["events"]) == 3
            assert (await client.events(events["nextCursor"]))["events"] == []
        finally:
            await client.close()
    finally:
        mariadb.drop_database(mariadb_server, root)
        mariadb_server.execute(f"DROP USER IF EXISTS '{user}'@'%'")


async def test_migrate_prints_the_capture_ddl_and_the_grants_retention_and_capture_need(
    postgres_server: Any,
) -> None:
    """The owner runs what ``--print-sql --capture`` prints; the connector's
    user, granted what ``--print-grants`` prints, serves the captured table
    and prunes both the outbox and the ledger."""
    import psycopg

    from connector.adapters.sql import SQLSource
    from tests.test_sql_adapter import Client

    url = create_database(postgres_server)
    role = f"cap_{uuid.uuid4().hex[:8]}"
    execute(url, TASKS_DDL["postgresql"], f"CREATE ROLE {role} LOGIN")
    try:
        async with process(["migrate", "--database-url", url]) as cli:
            assert await cli.wait(30) == 0, cli.output()
        async with process(["migrate", "--database-url", url, "--print-sql", "--capture"]) as cli:
            assert await cli.wait(30) == 0, cli.output()
            ddl = cli.output()
        assert "CREATE CONSTRAINT TRIGGER" in ddl and "INSERT INTO ablo_capture" in ddl
        assert execute(url, "SELECT to_regclass('ablo_capture') IS NULL")[0] == [(True,)]
        with psycopg.connect(url, autocommit=True) as owner:
            owner.execute(ddl.encode())
        async with process(["migrate", "--database-url", url, "--capture"]) as cli:
            assert await cli.wait(30) == 0, cli.output()
            assert "capture" not in cli.output()  # what was printed is what it installs
        async with process(["migrate", "--database-url", url, "--print-grants", role]) as cli:
            assert await cli.wait(30) == 0, cli.output()
            grants = [line for line in cli.output().splitlines() if line.startswith("GRANT")]
        assert f"GRANT SELECT, INSERT, DELETE ON public.ablo_outbox TO {role};" in grants
        assert (
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.ablo_idempotency TO {role};" in grants
        )
        assert f"GRANT SELECT ON public.ablo_capture TO {role};" in grants
        execute(url, *grants)
        execute(url, "INSERT INTO tasks (id, title) VALUES ('app', 'written by the application')")
        client = Client(SQLSource(url.replace("postgres@", f"{role}@")))  # as migrate: no map
        try:
            status, body = await client.commit(
                "c_cap", {"type": "CREATE", "model": "tasks", "id": "t1", "input": {"title": "T"}}
            )
            assert status == 200, body
            first = await client.events()
            assert [e["entityId"] for e in first["events"]] == ["app", "t1"]
            await client.events(first["nextCursor"])  # the engine has read both
            execute(
                url,
                "UPDATE ablo_outbox SET created_at = '2000-01-01'",
                "UPDATE ablo_idempotency SET expires_at = '2000-01-01'",
            )
            assert await client.source.prune() == (2, 1)
        finally:
            await client.close()
    finally:
        drop_database(postgres_server, url)
        execute(postgres_server.dsn, f"DROP ROLE IF EXISTS {role}")


async def test_migrate_prints_the_mariadb_capture_ddl_and_the_grants_capture_needs(
    mariadb_server: Any,
) -> None:
    """The owner runs what ``--print-sql --capture`` prints in the mariadb
    client (the triggers are compound statements: it sets a DELIMITER); the
    connector's user, granted what ``--print-grants`` prints, moves what the
    triggers staged into the outbox and serves it."""
    from connector.adapters.sql import SQLSource
    from tests.test_sql_adapter import Client

    root = mariadb.create_database(mariadb_server)
    name = root.rsplit("/", 1)[1]
    user, password = f"cap_{uuid.uuid4().hex[:8]}", "pw-capture-3c9a"
    as_user = _as_user(root, user, password)
    execute(root, TASKS_DDL["mysql"])
    mariadb_server.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
    try:
        async with process(["migrate", "--database-url", root]) as cli:
            assert await cli.wait(30) == 0, cli.output()
        async with process(["migrate", "--database-url", root, "--print-sql", "--capture"]) as cli:
            assert await cli.wait(30) == 0, cli.output()
            ddl = cli.output()
        assert (
            "DELIMITER //" in ddl
            and "CREATE OR REPLACE TRIGGER" in ddl
            and "INSERT INTO ablo_capture" in ddl
        )
        assert execute(root, "SHOW TABLES LIKE 'ablo_capture%%'")[0] == []  # printed only
        mariadb_server.execute(f"USE `{name}`;\n{ddl}")
        async with process(["migrate", "--database-url", root, "--capture"]) as cli:
            assert await cli.wait(30) == 0, cli.output()
            assert "capture" not in cli.output()  # what was printed is what it installs
        async with process(["migrate", "--database-url", root, "--print-grants", user]) as cli:
            assert await cli.wait(30) == 0, cli.output()
            grants = [line for line in cli.output().splitlines() if line.startswith("GRANT")]
        assert f"GRANT SELECT ON {name}.ablo_capture TO '{user}'@'%';" in grants
        assert f"GRANT SELECT, DELETE ON {name}.ablo_capture_pending TO '{user}'@'%';" in grants
        mariadb_server.execute("".join(grants))
        # The application's own user needs nothing more: triggers run as their definer.
        execute(root, "INSERT INTO tasks (id, title) VALUES ('app', 'written by the application')")
        client = Client(SQLSource(as_user))  # as migrate: no map
        try:
            status, body = await client.commit(
                "c_cap", {"type": "CREATE", "model": "tasks", "id": "t1", "input": {"title": "T"}}
            )
            assert status == 200, body
            first = await client.events()
            # The application's write waited in the staging table until this
            # page moved it; the commit had written its own event meanwhile.
            assert [e["entityId"] for e in first["events"]] == ["t1", "app"]
            assert execute(root, "SELECT count(*) FROM ablo_capture_pending")[0] == [(0,)]
        finally:
            await client.close()
        async with process(["migrate", "--database-url", root, "--remove-capture"]) as cli:
            assert await cli.wait(30) == 0, cli.output()
        assert execute(root, "SHOW TABLES LIKE 'ablo_capture%%'")[0] == []
        assert execute(root, "SHOW TRIGGERS")[0] == []
    finally:
        mariadb.drop_database(mariadb_server, root)
        mariadb_server.execute(f"DROP USER IF EXISTS '{user}'@'%'")


async def test_migrate_capture_refuses_a_table_that_is_not_innodb(mariadb_server: Any) -> None:
    """Capture's order rests on InnoDB's row locks and transactions: another
    engine is refused in one line, before anything is created."""
    url = mariadb.create_database(mariadb_server).replace("mysql://", "mariadb://")
    execute(url, TASKS_DDL["mysql"] + " ENGINE=MyISAM")
    try:
        for extra in ([], ["--print-sql"]):
            async with process(["migrate", "--database-url", url, "--capture", *extra]) as cli:
                assert await cli.wait(30) == 78, cli.output()
                lines = [line for line in cli.output().splitlines() if "InnoDB" in line]
                assert len(lines) == 1, cli.output()
                assert "uses the MyISAM engine" in lines[0] and "capture = false" in lines[0]
        tables = [name for (name,) in execute(url, "SHOW TABLES")[0]]
        assert not any(name.startswith("ablo_capture") for name in tables), tables
        assert execute(url, "SHOW TRIGGERS")[0] == []
    finally:
        mariadb.drop_database(mariadb_server, url)
